"""The stall watchdog's decision: no progress while the broker holds more, for N ticks."""

from __future__ import annotations

from stream_processor.watchdog import StallDetector


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
