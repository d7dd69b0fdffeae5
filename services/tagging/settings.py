"""The tagging service's settings (environment variables, see the README table)."""

from __future__ import annotations

from services.runtime.config import RuntimeSettings


class TaggingSettings(RuntimeSettings):
    tagging_port: int = 50052
    tagging_metrics_port: int = 9102
    # Lifecycle thresholds in days.
    lifecycle_new_days: int = 30
    lifecycle_active_days: int = 90
    lifecycle_sleeping_days: int = 180
    # How often bitmaps changed in real time are persisted.
    tagging_flush_seconds: float = 1.0
    # Consumer: redeliver a message idle this long; dead-letter after N deliveries.
    tagging_claim_idle_ms: int = 30_000
    tagging_max_deliveries: int = 5
    # After a rule tag is created or changed (or a category cycle set), a scoring run
    # over everyone starts this many seconds later; 0 leaves it to the scheduled runs.
    tagging_rescore_delay_seconds: float = 2.0
    # A partition of a scoring run that does not report within this many seconds
    # fails the run (naming it), which frees the run lock.
    tagging_partition_timeout_seconds: float = 300.0
    # At most this many order categories are tracked automatically (per-category
    # statistics and a repurchase_due:<category> tag each); later ones count in the
    # order features only, until an operator admits one with SetCategoryCycle.
    tagging_max_categories: int = 200
