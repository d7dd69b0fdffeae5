"""Computing every rule and score tag, and every segment, for a frame of members.

Pure functions over numpy masks and Roaring bitmaps; the engine decides what frame
(all members, a partition, one member) and what to do with the results."""

from __future__ import annotations

import array
from collections.abc import Callable, Iterable

import numpy as np
from pyroaring import BitMap

from services.tagging.domain import evaluation, scores
from services.tagging.domain import expressions as ex
from services.tagging.domain import population as pop
from services.tagging.domain.features import FeatureFrame

RFM_PREFIX = "rfm:"
LIFECYCLE_PREFIX = "lifecycle:"
QUADRANT_PREFIX = "quadrant:"
REPURCHASE_PREFIX = "repurchase_due:"
# Scores that need the whole population: recomputed only by scoring runs.
POPULATION_PREFIXES = (RFM_PREFIX, QUADRANT_PREFIX)


def bitmap_of(idx: np.ndarray, mask: np.ndarray | None = None) -> BitMap:
    chosen = idx if mask is None else idx[mask]
    return BitMap(array.array("I", chosen.astype(np.uint32).tobytes()))


def score_tag_names(category_names: Iterable[str]) -> dict[str, tuple[str, str]]:
    """Every built-in score tag: name -> (group, display name)."""
    names: dict[str, tuple[str, str]] = {}
    for key, zh in pop.RFM_CLASSES.values():
        names[RFM_PREFIX + key] = ("rfm", f"RFM {zh}")
    for key, zh in scores.LIFECYCLE.values():
        names[LIFECYCLE_PREFIX + key] = ("lifecycle", f"生命周期 {zh}")
    for key, zh in pop.QUADRANTS.values():
        names[QUADRANT_PREFIX + key] = ("quadrant", f"价值象限 {zh}")
    for cat in category_names:
        names[REPURCHASE_PREFIX + cat] = ("repurchase", f"复购到期 {cat}")
    return names


def in_dependency_order(
    defs: dict[str, ex.Expr], refs: Callable[[ex.Expr], set[str]]
) -> list[tuple[str, ex.Expr]]:
    """Definitions ordered so each comes after those it references (`refs` names
    them); a cycle raises ValueError naming it, e.g. "a -> b -> a"."""
    done: list[tuple[str, ex.Expr]] = []
    state: dict[str, int] = {}  # 1: visiting, 2: done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ValueError(" -> ".join([*path, name]))
        state[name] = 1
        for dep in sorted(refs(defs[name])):
            if dep in defs:
                visit(dep, [*path, name])
        state[name] = 2
        done.append((name, defs[name]))

    for name in sorted(defs):
        visit(name, [])
    return done


def per_member_scores(
    frame: FeatureFrame,
    cycles: dict[int, float],
    categories: dict[str, int],
    thresholds: scores.LifecycleThresholds,
) -> dict[str, np.ndarray]:
    """Scores that depend on the member alone: lifecycle and repurchase due."""
    masks: dict[str, np.ndarray] = {}
    stage = scores.lifecycle(frame, thresholds)
    for code, (key, _zh) in scores.LIFECYCLE.items():
        masks[LIFECYCLE_PREFIX + key] = stage == code
    due = scores.repurchase_due(frame, cycles)
    for name, cat_id in categories.items():
        masks[REPURCHASE_PREFIX + name] = due.due_mask(cat_id)
    return masks


def population_scores(frame: FeatureFrame, stats: pop.PopulationStats) -> dict[str, np.ndarray]:
    masks: dict[str, np.ndarray] = {}
    result = pop.rfm(frame, stats)
    for code, (key, _zh) in pop.RFM_CLASSES.items():
        masks[RFM_PREFIX + key] = result.rfm_class == code
    quadrant = pop.value_quadrant(frame, stats)
    for code, (key, _zh) in pop.QUADRANTS.items():
        masks[QUADRANT_PREFIX + key] = quadrant == code
    return masks


def compute_tags(
    frame: FeatureFrame,
    rules: list[tuple[str, ex.Expr]],
    given: dict[str, np.ndarray],
    categories: dict[str, int],
) -> dict[str, np.ndarray]:
    """Rule tags over the frame, given the masks already known (manual and score
    tags); returns every mask (given + rules)."""
    masks = dict(given)
    ctx = evaluation.FrameContext(frame, masks, {}, categories)
    for name, expr in rules:
        masks[name] = evaluation.evaluate(expr, ctx)
    return masks


def compute_segments(
    frame: FeatureFrame,
    segments: list[tuple[str, ex.Expr]],
    tag_masks: dict[str, np.ndarray],
    categories: dict[str, int],
) -> dict[str, np.ndarray]:
    """Segment masks over the frame, segments in dependency order."""
    seg_masks: dict[str, np.ndarray] = {}
    ctx = evaluation.FrameContext(frame, tag_masks, seg_masks, categories)
    for seg_id, expr in segments:
        seg_masks[seg_id] = evaluation.evaluate(expr, ctx)
    return seg_masks
