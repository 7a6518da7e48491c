"""How many images one engine call renders, by device, unless DF_MAX_BATCH says."""

from dreamforge.config import Settings


def test_unset_batch_is_eight_on_cpu_and_four_on_a_gpu_or_remote_provider() -> None:
    settings = Settings(max_batch=None)
    assert settings.batch_limit("cpu") == 8
    assert settings.batch_limit("cuda") == 4
    assert settings.batch_limit("mps") == 4
    assert settings.batch_limit(None) == 4


def test_df_max_batch_wins_on_every_device() -> None:
    settings = Settings(max_batch=2)
    assert [settings.batch_limit(d) for d in ("cpu", "cuda", None)] == [2, 2, 2]
