"""StreamingGaussian against a float64 two-pass reference computed with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from padim_plugin.gaussian import StreamingGaussian, UnsafeDowndateError, mahalanobis
from padim_plugin.statistics import StatisticsError, load_statistics, save_statistics

from ..fits import stream
from ..serving import free_port


def two_pass(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (P, C) and unbiased covariance (P, C, C) of (N, C, P) data, in float64, two passes."""
    data = embeddings.astype(np.float64).transpose(2, 0, 1)  # (P, N, C)
    mean = data.mean(axis=1)
    centered = data - mean[:, None, :]
    return mean, np.einsum("pnc,pnd->pcd", centered, centered) / (data.shape[1] - 1)


def assert_close(actual: torch.Tensor, expected: np.ndarray, rtol: float = 1e-5) -> None:
    """Relative to the largest magnitude of the expected array (entries near zero included)."""
    error = np.abs(actual.double().numpy() - expected).max()
    assert error <= rtol * np.abs(expected).max(), f"max error {error} vs scale {np.abs(expected).max()}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("offset", [0.0, 1e3])
def test_streamed_moments_equal_two_pass(dtype: torch.dtype, offset: float) -> None:
    generator = torch.Generator().manual_seed(1)
    # correlated channels, a large common offset, 3x4 positions, odd batch sizes
    mixing = torch.randn(6, 6, generator=generator, dtype=torch.float64)
    data = torch.randn(101, 3 * 4, 6, generator=generator, dtype=torch.float64) @ mixing
    embeddings = (data.permute(0, 2, 1).reshape(101, 6, 3, 4) + offset).to(dtype)
    gaussian = stream(embeddings, batch_size=7, flush_every=3)
    mean, covariance = two_pass(embeddings.flatten(2).numpy())
    assert gaussian.n_samples == 101
    assert_close(gaussian.mean(), mean)
    identity = np.eye(6)
    assert_close(gaussian.covariance(epsilon=0.0), covariance)
    assert_close(gaussian.covariance(epsilon=0.01), covariance + 0.01 * identity)


def test_float32_accumulation_stays_accurate_over_many_batches() -> None:
    """2000 images in batches of 4 with an offset of 50: flushing keeps float32 sums exact enough."""
    generator = torch.Generator().manual_seed(2)
    embeddings = (torch.randn(2000, 8, 2, 2, generator=generator) * 0.5 + 50).float()
    gaussian = stream(embeddings, batch_size=4)
    mean, covariance = two_pass(embeddings.flatten(2).numpy())
    assert_close(gaussian.mean(), mean)
    assert_close(gaussian.covariance(epsilon=0.0), covariance)


def test_merge_of_shards_equals_fit_on_all() -> None:
    generator = torch.Generator().manual_seed(3)
    embeddings = torch.randn(60, 5, 2, 3, generator=generator, dtype=torch.float64) * 3 + 7
    whole = stream(embeddings, batch_size=9)
    shard_a = stream(embeddings[:23], batch_size=4)
    shard_b = stream(embeddings[23:], batch_size=10)
    merged = StreamingGaussian().merge(shard_a).merge(shard_b)
    assert merged.n_samples == 60
    torch.testing.assert_close(merged.mean(), whole.mean(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged.covariance(), whole.covariance(), rtol=1e-10, atol=1e-12)


def test_subtracting_removed_images_equals_the_two_pass_fit_on_the_rest() -> None:
    """Fit all, add some more, take some of the first ones out: the rest's two-pass moments."""
    generator = torch.Generator().manual_seed(5)
    mixing = torch.randn(5, 5, generator=generator, dtype=torch.float64)
    data = (torch.randn(90, 2 * 3, 5, generator=generator, dtype=torch.float64) @ mixing + 20.0)
    embeddings = data.permute(0, 2, 1).reshape(90, 5, 2, 3).float()
    kept, removed, added = embeddings[:60], embeddings[60:70], embeddings[70:]
    gaussian = stream(torch.cat([kept, removed]), batch_size=8)
    gaussian.merge(stream(added, batch_size=3)).subtract(stream(removed, batch_size=4))
    mean, covariance = two_pass(torch.cat([kept, added]).flatten(2).numpy())
    assert gaussian.n_samples == 80
    assert_close(gaussian.mean(), mean, rtol=1e-6)
    assert_close(gaussian.covariance(epsilon=0.0), covariance, rtol=1e-6)


def test_a_downdate_that_removes_most_of_a_variance_is_refused_and_changes_nothing() -> None:
    """The removed images are the only ones that vary in channel 1: what is left is rounding."""
    generator = torch.Generator().manual_seed(6)
    quiet = torch.randn(40, 3, 2, 2, generator=generator)
    quiet[:, 1] = 7.0 + 1e-4 * quiet[:, 1]
    loud = torch.randn(10, 3, 2, 2, generator=generator) * 5
    gaussian = stream(torch.cat([quiet, loud]), batch_size=16)
    before = {name: value.clone() for name, value in gaussian.state_dict().items()}
    with pytest.raises(UnsafeDowndateError, match="variance of channel 1"):
        gaussian.subtract(stream(loud, batch_size=16))
    assert all(torch.equal(value, gaussian.state_dict()[name]) for name, value in before.items())


def test_a_downdate_leaving_fewer_than_two_images_is_refused() -> None:
    embeddings = torch.randn(5, 2, 1, 1)
    with pytest.raises(UnsafeDowndateError, match="removing 4 of 5 images leaves fewer than 2"):
        stream(embeddings, batch_size=2).subtract(stream(embeddings[1:], batch_size=2))


def test_kept_statistics_round_trip_exactly_through_a_file(tmp_path) -> None:
    gaussian = stream(torch.randn(30, 4, 3, 5) + 3.0, batch_size=7)
    size = save_statistics(gaussian, tmp_path / "kept", {"images": {"train/good/a.png": "0" * 32}})
    loaded = load_statistics(tmp_path / "kept")
    assert size == sum(path.stat().st_size for path in (tmp_path / "kept").iterdir())
    for name, value in gaussian.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_damaged_kept_statistics_are_refused_naming_the_file(tmp_path) -> None:
    save_statistics(stream(torch.randn(8, 3, 2, 2), batch_size=4), tmp_path / "kept", {})
    tensors = tmp_path / "kept" / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(StatisticsError, match="tensors.safetensors"):
        load_statistics(tmp_path / "kept")


def test_merge_rejects_other_shapes() -> None:
    a = stream(torch.randn(4, 3, 2, 2), 4)
    b = stream(torch.randn(4, 3, 2, 3), 4)
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(b)


def test_update_rejects_other_shapes_and_non_finite_batches() -> None:
    gaussian = stream(torch.randn(4, 3, 2, 2), 4)
    with pytest.raises(ValueError, match="positions"):
        gaussian.update(torch.randn(4, 3, 4, 4), batch_name="batch 7")
    bad = torch.randn(4, 3, 2, 2)
    bad[2, 1, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="batch 9.*NaN or Inf"):
        gaussian.update(bad, batch_name="batch 9")
    bad[2, 1, 0, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or Inf"):
        gaussian.update(bad)
    assert gaussian.n_samples == 4, "a rejected batch must leave the statistics untouched"


def test_fewer_than_two_images_is_an_error() -> None:
    gaussian = stream(torch.randn(1, 3, 2, 2), 1)
    with pytest.raises(ValueError, match="at least 2 training images, got 1"):
        gaussian.covariance()


def test_whitening_gives_mahalanobis_distance() -> None:
    generator = torch.Generator().manual_seed(4)
    embeddings = torch.randn(40, 4, 2, 2, generator=generator, dtype=torch.float64)
    gaussian = stream(embeddings, 8)
    query = torch.randn(3, 4, 2, 2, generator=generator, dtype=torch.float64)
    distance = mahalanobis(query, gaussian.mean(), gaussian.whitening(0.01, torch.float64, chunk=3))
    mean, covariance = two_pass(embeddings.flatten(2).numpy())
    inverse = np.linalg.inv(covariance + 0.01 * np.eye(4))
    delta = query.flatten(2).numpy().transpose(0, 2, 1) - mean  # (B, P, C)
    expected = np.sqrt(np.einsum("bpc,pcd,bpd->bp", delta, inverse, delta)).reshape(3, 2, 2)
    np.testing.assert_allclose(distance.numpy(), expected, rtol=1e-10)


def test_state_dict_round_trip_into_a_fresh_module() -> None:
    gaussian = stream(torch.randn(10, 3, 2, 2) + 5, 3)
    restored = StreamingGaussian()
    restored.load_state_dict(gaussian.state_dict())
    torch.testing.assert_close(restored.covariance(), gaussian.covariance())
    restored.update(torch.randn(2, 3, 2, 2))  # and it keeps accumulating
    assert restored.n_samples == 12


def _all_reduce_worker(rank: int, world: int, port: int, shards: list[torch.Tensor], out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        gaussian = StreamingGaussian()
        if shards[rank].shape[0]:  # rank 2 has no data at all and must still join
            gaussian.update(shards[rank])
        gaussian.all_reduce()
        if rank == 2:  # the rank without data learns the statistics and their grid from the others
            torch.save({"count": gaussian.n_samples, "mean": gaussian.mean(),
                        "covariance": gaussian.covariance(), "pooled": gaussian.pooled("neighbourhood")}, out)
    finally:
        dist.destroy_process_group()


def test_all_reduce_across_processes_equals_single_fit(tmp_path) -> None:
    port = free_port()
    embeddings = torch.randn(13, 4, 3, 3, dtype=torch.float64) + 100
    shards = [embeddings[:5], embeddings[5:], embeddings[:0]]
    out = str(tmp_path / "reduced.pt")
    # forked, not spawned: the children need not import torch again
    mp.start_processes(_all_reduce_worker, args=(3, port, shards, out), nprocs=3, start_method="fork")
    reduced = torch.load(out)
    mean, covariance = two_pass(embeddings.flatten(2).numpy())
    assert reduced["count"] == 13
    assert_close(reduced["mean"], mean, rtol=1e-10)
    assert_close(reduced["covariance"], covariance + 0.01 * np.eye(4), rtol=1e-10)
    single = stream(embeddings, 13).pooled("neighbourhood")
    for actual, expected in zip(reduced["pooled"], single, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-8)
