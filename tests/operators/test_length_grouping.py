from llava_batch.operators.generation.length_grouping import padding_share, plan_generate_calls


def test_without_grouping_calls_keep_arrival_order():
    assert plan_generate_calls([5, 100, 6, 90], max_rows=2, group_by_length=False) == [[0, 1], [2, 3]]


def test_grouping_puts_similar_lengths_together_and_cuts_padding():
    lengths = [5, 100, 6, 90]
    grouped = plan_generate_calls(lengths, max_rows=2)
    assert grouped == [[0, 2], [3, 1]]
    plain = plan_generate_calls(lengths, max_rows=2, group_by_length=False)
    assert padding_share(lengths, grouped) < padding_share(lengths, plain) / 2


def test_token_budget_limits_rows_times_longest():
    calls = plan_generate_calls([10, 10, 10, 40, 40], max_rows=8, max_tokens=80)
    assert calls == [[0, 1, 2], [3, 4]]
    assert all(max([10, 10, 10, 40, 40][i] for i in call) * len(call) <= 80 for call in calls)


def test_a_row_longer_than_the_budget_runs_alone():
    assert plan_generate_calls([500, 10], max_rows=4, max_tokens=100) == [[1], [0]]


def test_every_row_is_planned_exactly_once():
    lengths = [(i * 37) % 101 for i in range(50)]
    calls = plan_generate_calls(lengths, max_rows=7, max_tokens=300)
    assert sorted(i for call in calls for i in call) == list(range(50))
    assert all(len(call) <= 7 for call in calls)
