"""The stall watchdog's decision: no progress while the broker holds more, for N ticks."""

from __future__ import annotations

from stream_processor.watchdog import HoleGuard, StallDetector, Verdict


def test_a_partition_without_progress_while_messages_wait_is_stalled_on_the_second_tick() -> None:
    detector = StallDetector(ticks=2)
    assert detector.observe({0: 10, 1: 5}, {0: 12, 1: 5}) == {}
    assert detector.observe({0: 10, 1: 5}, {0: 12, 1: 5}) == {0: (10, 12)}


def test_exactly_one_waiting_message_counts() -> None:
    detector = StallDetector(ticks=2)
    detector.observe({3: 41}, {3: 42})
    assert detector.observe({3: 41}, {3: 42}) == {3: (41, 42)}


def test_progress_or_nothing_waiting_is_not_a_stall() -> None:
    detector = StallDetector(ticks=2)
    detector.observe({0: 10}, {0: 50})
    assert detector.observe({0: 20}, {0: 60}) == {}  # moved: the count starts again
    assert detector.observe({0: 60}, {0: 60}) == {}  # caught up
    assert detector.observe({0: 60}, {0: 60}) == {}


def test_a_partition_the_broker_did_not_report_on_gets_no_verdict() -> None:
    detector = StallDetector(ticks=2)
    detector.observe({0: 10}, {0: 12})
    assert detector.observe({0: 10}, {}) == {}
    assert detector.observe({0: 10}, {0: 12}) == {}  # counting starts again


def test_after_an_alarm_the_seek_gets_time_to_work_and_reset_forgets() -> None:
    detector = StallDetector(ticks=2)
    detector.observe({0: 10}, {0: 12})
    assert detector.observe({0: 10}, {0: 12}) == {0: (10, 12)}
    assert detector.observe({0: 10}, {0: 12}) == {}
    assert detector.observe({0: 10}, {0: 12}) == {0: (10, 12)}
    detector.observe({0: 10}, {0: 12})
    detector.reset()
    assert detector.observe({0: 10}, {0: 12}) == {}


def test_revoked_partitions_are_forgotten() -> None:
    detector = StallDetector(ticks=2)
    detector.observe({0: 10, 1: 7}, {0: 12, 1: 9})
    detector.observe({1: 7}, {1: 9})  # partition 0 moved away
    assert detector.observe({0: 10, 1: 7}, {0: 12, 1: 9}) == {}


def test_a_hole_is_refetched_then_waited_for_then_retried_then_accepted() -> None:
    clock = [100.0]
    guard = HoleGuard(retries=2, retry_after_s=1.0, clock=lambda: clock[0])
    assert guard.check(3, 12, 16) is Verdict.SEEK  # 12 expected, 16 came: re-fetch from 12
    assert guard.check(3, 12, 17) is Verdict.SKIP  # the rest of the stale fetch
    clock[0] += 1.5
    assert guard.check(3, 12, 16) is Verdict.SEEK  # re-fetched and still past the hole
    clock[0] += 1.5
    assert guard.check(3, 12, 16) is Verdict.ACCEPT  # the log itself lacks 12..15
    assert guard.check(3, 12, 16) is Verdict.SEEK  # a new hole starts over


def test_a_closed_hole_or_another_partition_starts_over() -> None:
    guard = HoleGuard(retries=2, retry_after_s=60.0, clock=lambda: 0.0)
    assert guard.check(0, 5, 9) is Verdict.SEEK
    assert guard.check(1, 5, 9) is Verdict.SEEK  # holes are per partition
    guard.closed(0)
    assert guard.check(0, 5, 9) is Verdict.SEEK
    assert guard.check(0, 6, 9) is Verdict.SEEK  # another expected offset: another hole
