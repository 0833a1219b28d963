from speechforge.train.trainer import _number


def test_step_line_numbers_read_as_numbers():
    assert _number(0.00030300000000000005) == "3.03e-04"  # a learning rate
    assert _number(3.02662) == "3.027"
    assert _number(0.5805) == "0.5805"
    assert _number(21646.7) == "21647"  # frames/s
    assert _number(0.0) == "0"
    assert _number(102) == "102" and _number(None) == "None"
