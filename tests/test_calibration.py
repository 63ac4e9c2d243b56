"""Attention-bias calibration: entries over the threshold are masked in the configured layers only."""

from __future__ import annotations

import torch

from parallelcomp_llm.attention import AttentionProbe, Calibration
from parallelcomp_llm.stages import BiasCalibrator
from parallelcomp_llm.testing import text_of_tokens, tiny_engine


def test_bias_entries_are_the_region_entries_over_the_threshold():
    calibrator = BiasCalibrator(layers=(0, 0), threshold=2.0)
    offsets = torch.tensor([[[-1, 0, 1, 2]]])
    lengths = torch.tensor([[[0, 3, 3, 3]]])
    attention = torch.tensor([[[0.7, 0.02, 0.2, 0.03, 0.05]]])
    assert calibrator.biased(attention, offsets, lengths).tolist() == [[[False] * 4]]
    attention = torch.tensor([[[0.5, 0.5, 0.05, 0.1, 0.05]]])
    assert calibrator.biased(attention, offsets, lengths).tolist() == [
        [[False, True, False, False]]
    ]
    recent = BiasCalibrator(layers=(0, 0), threshold=2.0, region="recent", region_tokens=1)
    attention = torch.tensor([[[0.05, 0.45, 0.0, 0.5, 0.0]]])
    assert recent.biased(attention, offsets, lengths).tolist() == [[[False, False, False, True]]]


def test_probe_masks_the_biased_key_in_calibrated_layers_only():
    keys = torch.zeros(1, 1, 5, 4)
    keys[0, 0, 2] = torch.tensor([8.0, 0, 0, 0])
    query = torch.zeros(1, 2, 1, 4)
    query[..., 0] = 1.0
    calibration = Calibration(BiasCalibrator(layers=(0, 0), threshold=2.0))
    calibration.offsets[0] = torch.arange(4)[None, None]
    calibration.lengths[0] = torch.full((1, 1, 4), 4)
    probe = AttentionProbe(calibration=calibration)
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
    reference = tiny_engine("llama", kept_chunks="merge").generate(docs, "Q?", max_new_tokens=8)
    loose = tiny_engine("llama", calibration_layers=(0, 1), calibration_threshold=1e9)
    answer = loose.generate(docs, "Q?", max_new_tokens=8)
    assert answer.token_ids == reference.token_ids
    assert answer.stats.kv_entries_kept == reference.stats.kv_entries_kept


def test_calibration_masks_entries_and_changes_the_answer():
    docs = [text_of_tokens(300, seed=i) for i in range(3)]
    reference = tiny_engine("llama", kept_chunks="merge").generate(docs, "Q?", max_new_tokens=8)
    strict = tiny_engine("llama", calibration_layers=(0, 1), calibration_threshold=1.01)
    assert strict.generate(docs, "Q?", max_new_tokens=8).token_ids != reference.token_ids
