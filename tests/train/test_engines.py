"""The forward step both engines share (:class:`napari_rat.train.engines.EngineBase`)."""

import pytest
import torch

from napari_rat.train.engines import EngineBase, LocalEngine


class _Recorder(torch.nn.Module):
    """Records what the engine hands the model: input dtypes, autocast state, spacings."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.seen = None

    def forward(self, x, spacings):
        levels = x if isinstance(x, list) else [x]
        self.seen = {
            "levels": len(levels),
            "list": isinstance(x, list),
            "dtypes": {t.dtype for t in levels},
            "autocast": torch.is_autocast_enabled("cpu"),
            "autocast_dtype": torch.get_autocast_dtype("cpu"),
            "spacings": spacings,
        }
        return [t.float().mean() * self.weight for t in levels]


class _CastEngine(EngineBase):
    """The DeepSpeed engine's setting (weights held in the run's precision), without DeepSpeed."""

    cast_inputs = True

    def __init__(self, model, precision):
        self.model, self.device, self.precision = model, torch.device("cpu"), precision


def _batch(levels: int):
    images = [torch.rand(2, 1, 8 // 2**i, 8 // 2**i) for i in range(levels)]
    return images, [(1.0 * 2**i, 1.0 * 2**i) for i in range(levels)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_local_engine_runs_fp32_inputs_under_autocast(tiny, precision):
    model = _Recorder()
    engine = LocalEngine(model, tiny(), 2, torch.device("cpu"), precision)
    images, spacings = _batch(1)
    engine.forward(images, spacings)
    assert model.seen["dtypes"] == {torch.float32} and not model.seen["list"]
    assert model.seen["autocast"] == (precision == "bf16")
    if precision == "bf16":
        assert model.seen["autocast_dtype"] == torch.bfloat16


@pytest.mark.parametrize(
    ("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)]
)
def test_cast_engine_casts_inputs_without_autocast(precision, dtype):
    model = _Recorder()
    images, spacings = _batch(2)
    _CastEngine(model, precision).forward(images, spacings)
    assert model.seen["dtypes"] == {dtype} and not model.seen["autocast"]
    assert model.seen["list"] and model.seen["levels"] == 2
    assert model.seen["spacings"] == spacings


def test_train_switches_the_called_model():
    model = _Recorder()
    engine = _CastEngine(model, "fp32")
    engine.train(False)
    assert not model.training
    engine.train(True)
    assert model.training


def test_the_engine_says_when_no_gradient_is_half_accumulated(tiny):
    config = tiny(training={"accumulation_steps": 2})
    engine = LocalEngine(_Recorder(), config, 4, torch.device("cpu"), "fp32")
    assert engine.at_accumulation_boundary
    images, spacings = _batch(1)
    assert not engine.backward(engine.forward(images, spacings)[0])
    assert not engine.at_accumulation_boundary  # the loop must not stop and save here
    assert engine.backward(engine.forward(images, spacings)[0])
    assert engine.at_accumulation_boundary
