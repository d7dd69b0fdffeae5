"""CheckMembership's answers are built once per distinct answer and shared."""

from services.tagging.api import MembershipAnswers


def test_one_message_per_distinct_answer():
    answers = MembershipAnswers()
    first = answers.answer({"vips": True, "moms": False})
    assert dict(first.memberships) == {"vips": True, "moms": False}
    assert answers.answer({"vips": True, "moms": False}) is first
    other = answers.answer({"vips": False, "moms": False})
    assert other is not first and dict(other.memberships) == {"vips": False, "moms": False}
    # The order asked is part of the answer's key (a different list of segments).
    assert answers.answer({"moms": False, "vips": True}) is not first


def test_the_table_is_bounded():
    answers = MembershipAnswers(limit=4)
    kept = [answers.answer({f"s{i}": True}) for i in range(4)]
    assert answers.answer({"s0": True}) is kept[0]
    fifth = answers.answer({"s4": True})  # full: starts over
    assert dict(fifth.memberships) == {"s4": True}
    assert answers.answer({"s0": True}) is not kept[0]
    assert len(answers._built) <= 4


def test_answers_about_many_segments_are_not_kept():
    answers = MembershipAnswers(max_segments=2)
    many = {"a": True, "b": False, "c": True}
    first = answers.answer(many)
    assert dict(first.memberships) == many
    assert answers.answer(many) is not first and not answers._built
