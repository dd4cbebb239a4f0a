"""MixtureSampler: Table 1 ratios, determinism, epoch order, ranks, exact resumption."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest
import torch

from factorportrait.data import MixtureSampler, indices_by_kind
from factorportrait.data.mixture import BLOCK

STAGE3 = {"phone": 0.2, "studio": 0.2, "viewsweep": 0.3, "dynamicsweep": 0.3}  # Table 1
STAGE2 = {"phone": 0.6, "studio": 0.4}
# a dataset of 120 clips whose kinds interleave, as in a real manifest
KINDS = ["phone", "studio", "viewsweep", "dynamicsweep", "phone", "viewsweep"] * 20
KIND_OF = dict(enumerate(KINDS))
POOLS = indices_by_kind(KINDS)


def take(sampler: MixtureSampler, count: int) -> list[int]:
    return list(islice(iter(sampler), count))


def test_indices_by_kind_groups_positions():
    assert indices_by_kind(["a", "b", "a"]) == {"a": [0, 2], "b": [1]}
    assert len(POOLS["phone"]) == 40 and len(POOLS["studio"]) == 20


@pytest.mark.parametrize("ratios", [STAGE3, STAGE2, {"phone": 1.0}])
def test_ratios_within_two_percent_over_10k_draws(ratios):
    counts = Counter(KIND_OF[i] for i in take(MixtureSampler(POOLS, ratios, seed=3), 10_000))
    total = sum(ratios.values())
    for kind in POOLS:
        assert abs(counts[kind] / 10_000 - ratios.get(kind, 0) / total) < 0.02, (kind, counts)


def test_ratios_are_normalised_and_absent_kinds_never_drawn():
    sampler = MixtureSampler(POOLS, {"phone": 3, "studio": 2, "viewsweep": 0}, seed=0)
    assert sampler.probabilities == {"phone": 0.6, "studio": 0.4}
    assert {KIND_OF[i] for i in take(sampler, 2000)} == {"phone", "studio"}


def test_deterministic_for_a_seed_and_different_across_seeds():
    first = take(MixtureSampler(POOLS, STAGE3, seed=7), 3000)
    assert take(MixtureSampler(dict(reversed(POOLS.items())), STAGE3, seed=7), 3000) == first
    assert take(MixtureSampler(POOLS, STAGE3, seed=8), 3000) != first


def test_each_kind_is_an_epoch_shuffled_sequence():
    stream = take(MixtureSampler(POOLS, STAGE3, seed=1), 5000)
    for kind, pool in POOLS.items():
        draws = [i for i in stream if KIND_OF[i] == kind]
        epochs = [draws[e * len(pool):(e + 1) * len(pool)] for e in range(3)]
        assert all(sorted(epoch) == sorted(pool) for epoch in epochs), kind  # each clip once
        assert epochs[0] != epochs[1]  # a fresh order per epoch


@pytest.mark.parametrize("stop", [1, 2500, BLOCK, BLOCK + 904])
def test_resume_continues_the_uninterrupted_stream(stop):
    uninterrupted = take(MixtureSampler(POOLS, STAGE3, seed=5), stop + 1500)
    sampler = MixtureSampler(POOLS, STAGE3, seed=5)
    assert take(sampler, stop) == uninterrupted[:stop]
    state = sampler.state_dict()
    assert state["samples_consumed"] == stop
    resumed = MixtureSampler(POOLS, STAGE3, seed=5)
    resumed.load_state_dict(state)
    assert take(resumed, 1500) == uninterrupted[stop:]
    other = MixtureSampler(POOLS, STAGE3, seed=5)
    other.load_state_dict({"samples_consumed": stop})  # the count alone suffices
    assert take(other, 1500) == uninterrupted[stop:]


def test_ranks_are_disjoint_and_interleave_into_the_single_stream():
    world = 4
    single = take(MixtureSampler(POOLS, STAGE3, seed=2), 4 * 2600)
    ranks = [take(MixtureSampler(POOLS, STAGE3, seed=2, rank=r, world_size=world), 2600)
             for r in range(world)]
    assert [ranks[p % world][p // world] for p in range(len(single))] == single
    assert all(rank == single[r::world] for r, rank in enumerate(ranks))  # disjoint positions


def test_rank_resume_and_world_size_change():
    single = take(MixtureSampler(POOLS, STAGE3, seed=4), 6000)
    ranks = [MixtureSampler(POOLS, STAGE3, seed=4, rank=r, world_size=2) for r in range(2)]
    for sampler in ranks:
        take(sampler, 1000)
    state = ranks[1].state_dict()
    assert state["samples_consumed"] == 2000
    resumed = []
    for r in range(4):  # continue on 4 processes
        sampler = MixtureSampler(POOLS, STAGE3, seed=4, rank=r, world_size=4)
        sampler.load_state_dict(state)
        resumed.append(take(sampler, 1000))
    assert [resumed[p % 4][p // 4] for p in range(4000)] == single[2000:6000]


def test_works_as_a_dataloader_sampler():
    sampler = MixtureSampler(POOLS, STAGE3, seed=9)
    expected = take(MixtureSampler(POOLS, STAGE3, seed=9), 8)
    loader = torch.utils.data.DataLoader(list(range(len(KINDS))), sampler=sampler, batch_size=4)
    batches = list(islice(iter(loader), 2))
    assert torch.cat(batches).tolist() == expected
    assert sampler.samples_consumed == 8


@pytest.mark.parametrize("ratios, message", [
    ({"phone": -0.1, "studio": 1}, "ratio of kind 'phone' must be a finite number >= 0"),
    ({"phone": float("nan")}, "ratio of kind 'phone'"),
    ({"phone": 0, "studio": 0}, "ratios must sum to > 0"),
    ({"phone": 0.5, "selfie": 0.5}, "kind 'selfie' has ratio 0.5 but no clips"),
])
def test_invalid_ratios_name_the_kind(ratios, message):
    with pytest.raises(ValueError, match=message):
        MixtureSampler(POOLS, ratios, seed=0)


def test_empty_kind_with_positive_ratio_is_refused():
    with pytest.raises(ValueError, match="kind 'studio' has ratio 0.4 but no clips"):
        MixtureSampler({"phone": [0, 1], "studio": []}, STAGE2, seed=0)


def test_invalid_arguments_and_mismatched_state():
    with pytest.raises(ValueError, match="rank must be in"):
        MixtureSampler(POOLS, STAGE3, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="seed must be an int"):
        MixtureSampler(POOLS, STAGE3, seed=-1)
    with pytest.raises(ValueError, match="indices of kind 'phone' must be a flat list"):
        MixtureSampler({"phone": [0.5, 1.0]}, {"phone": 1}, seed=0)
    sampler = MixtureSampler(POOLS, STAGE3, seed=0)
    state = MixtureSampler(POOLS, STAGE3, seed=1).state_dict()
    with pytest.raises(ValueError, match="saved seed 1 differs"):
        sampler.load_state_dict(state)
    with pytest.raises(ValueError, match="saved probabilities"):
        sampler.load_state_dict({"samples_consumed": 0, "probabilities": STAGE2})
    with pytest.raises(ValueError, match="samples_consumed must be an int"):
        sampler.load_state_dict({})
