"""Attention-bias calibration: entries over the threshold are masked in the configured layers only."""

from __future__ import annotations

import torch

from parallelcomp_llm.attention import AttentionProbe, CalibrationRule
from parallelcomp_llm.testing import text_of_tokens, tiny_engine


def test_keep_mask_drops_candidates_over_threshold_only():
    candidates = {0: torch.tensor([[[False, True, True, True]]])}
    rule = CalibrationRule(range(0, 1), candidates, threshold=2.0)
    attention = torch.tensor([[[0.7, 0.02, 0.2, 0.03, 0.05]]])
    assert rule.keep_mask(0, attention).tolist() == [[[True] * 5]]
    attention = torch.tensor([[[0.3, 0.5, 0.05, 0.1, 0.05]]])
    assert rule.keep_mask(0, attention).tolist() == [[[True, False, True, True, True]]]


def test_probe_masks_the_biased_key_in_calibrated_layers_only():
    keys = torch.zeros(1, 1, 5, 4)
    keys[0, 0, 2] = torch.tensor([8.0, 0, 0, 0])
    query = torch.zeros(1, 2, 1, 4)
    query[..., 0] = 1.0
    candidates = {0: torch.ones(1, 1, 4, dtype=torch.bool)}
    probe = AttentionProbe(calibration=CalibrationRule(range(0, 1), candidates, threshold=2.0))
    mask = probe.observe(0, query, keys, None, scaling=1.0)
    assert mask.shape == (1, 2, 1, 5)
    assert mask[0, :, 0].tolist() == [[True, True, False, True, True]] * 2
    longer = torch.cat([keys, torch.zeros(1, 1, 1, 4)], dim=2)
    assert probe.observe(0, query, longer, None, scaling=1.0)[0, 0, 0].tolist() == [
        True,
        True,
        False,
        True,
        True,
        True,
    ]
    assert probe.observe(1, query, keys, None, scaling=1.0) is None


def test_calibration_with_unreachable_threshold_changes_nothing():
    docs = [text_of_tokens(300, seed=i) for i in range(3)]
    reference = tiny_engine("llama").generate(docs, "Q?", max_new_tokens=8)
    loose = tiny_engine("llama", calibration_layers=(0, 1), calibration_threshold=1e9)
    answer = loose.generate(docs, "Q?", max_new_tokens=8)
    assert answer.token_ids == reference.token_ids
    assert answer.stats.kv_entries_kept == reference.stats.kv_entries_kept
