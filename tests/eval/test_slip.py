"""The refresh job's rule: when does a new generator slip past the champion?"""

import pytest

from gendet.config import ConfigError
from gendet.eval.slip import SlipRule, format_verdicts, judge


def _report(**subsets):
    return {"subsets": {name: {"acc_calibrated": acc, "fake_acc_calibrated": fake, "ap": ap, "n_real": 10, "n_fake": 10}
                        for name, (acc, fake, ap) in subsets.items()}}


def test_a_subset_below_reference_minus_drop_or_with_few_fakes_caught_alerts():
    report = _report(holds=(0.90, 0.85, 0.97), drops=(0.80, 0.70, 0.95), misses=(0.93, 0.40, 0.60))
    verdicts = {v.subset: v for v in judge(report, reference=0.92, rule=SlipRule(max_drop=0.05, min_fake_acc=0.5))}
    assert not verdicts["holds"].slipped  # 0.90 >= 0.92 - 0.05
    assert verdicts["drops"].slipped and "below the champion's reference" in verdicts["drops"].reason
    assert "recalibrate" in verdicts["drops"].reason  # AP 0.95: the scores still rank the new fakes
    assert verdicts["misses"].slipped and "40.0% of its fakes" in verdicts["misses"].reason
    assert "retrain with this generator" in verdicts["misses"].reason
    table = format_verdicts(list(verdicts.values()), 0.92)
    assert table.count("ALERT") == 2 and "| holds | 10 | 10 | 90.0 | 85.0 | 97.0 | ok |" in table


def test_without_a_reference_only_the_fake_catch_floor_applies():
    verdicts = judge(_report(low=(0.55, 0.6, None)), reference=None, rule=SlipRule())
    assert not verdicts[0].slipped and "no reference" in verdicts[0].reason
    assert judge(_report(low=(0.55, 0.2, None)), reference=None, rule=SlipRule())[0].slipped


def test_missing_numbers_do_not_crash_and_bad_rules_fail_early():
    verdicts = judge(_report(empty=(None, None, None)), reference=0.9, rule=SlipRule())
    assert not verdicts[0].slipped and verdicts[0].acc_calibrated is None
    with pytest.raises(ConfigError, match="max_drop"):
        SlipRule(max_drop=-0.1)
    with pytest.raises(ConfigError, match="min_fake_acc"):
        SlipRule(min_fake_acc=1.5)
