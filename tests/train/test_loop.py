import json
import threading

import pytest
import torch

from napari_rat.model import load_checkpoint
from napari_rat.train.checkpoint_store import LocalStore
from napari_rat.train.engines import lr_lambda
from napari_rat.train.evaluation import MIN_INSTANCE_PIXELS
from napari_rat.train.loop import train_events

from .conftest import BF16_PROBE

pytestmark = pytest.mark.filterwarnings(BF16_PROBE)


def test_schedule_warmup_then_cosine():
    f = lr_lambda(2, 10, 0.1)
    assert f(0) == 0.5 and f(1) == 1.0
    assert f(10) == pytest.approx(0.1) and f(6) < f(3)


def test_loop_in_process_writes_best_last_and_metrics(tiny):
    config = tiny(data={"val_fraction": 0.25})
    events = list(train_events(config))
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "finished"
    assert kinds.count("validation") == 2
    folder = config.training.output_dir + "/tiny"
    model = load_checkpoint(folder + "/best.safetensors")
    info = model.checkpoint_info
    assert info.normalization["method"] == "percentile"
    assert info.training_spacing == [1.0, 1.0]
    records = [json.loads(x) for x in open(folder + "/metrics.jsonl")]
    assert {r["kind"] for r in records} == {"train", "val"}
    assert all(r["lr"] > 0 for r in records if r["kind"] == "train")
    # The minimum instance size picked on validation travels with the best weights.
    best_val = max((r for r in records if r["kind"] == "val"), key=lambda r: r["score"])
    chosen = info.model_config.head.min_instance_size
    assert chosen is not None and chosen == best_val["min_instance_size"]
    assert chosen / 1.0 in MIN_INSTANCE_PIXELS  # spacing 1: a physical size of n pixels


class Thresholder(torch.nn.Module):
    """A segmentation "model" the engine can run: 2D, one channel, two classes + boundary; it
    reads the foreground off its input (above 0.5)."""

    num_outputs, spatial_dims, boundary = 3, 2, True
    class_names = ["background", "nucleus"]
    backbone = type("Backbone", (), {"input_features": 1})

    def forward(self, x, input_spacing=None):
        x = x[0] if isinstance(x, list) else x
        f = (x[:, :1] > 0.5).float() * 12 - 6
        return [torch.cat([-f, f, torch.full_like(f, -6.0)], dim=1)]


def test_validation_picks_the_instance_size_only_when_unset(tiny):
    import numpy as np

    from napari_rat.train.datasets import EvalRegion
    from napari_rat.train.evaluation import evaluate_regions

    config = tiny()
    truth = np.zeros((48, 48), np.int32)
    truth[4:20, 4:20] = 1
    truth[26:44, 24:44] = 2
    # A "model" that reads the foreground off its input: the truth plus a 3-pixel speck.
    fg = truth > 0
    fg[40:41, 2:5] = True

    image = fg.astype(np.float32)[None]
    region = EvalRegion(name="band", image=image, labels=truth, spacing=(2.0, 2.0))
    picked = evaluate_regions(Thresholder(), [region], config, select_min_instance_size=True)
    assert picked["ap50"] == 1.0 and picked["min_instance_size"] == 8 * 4.0  # physical
    plain = evaluate_regions(Thresholder(), [region], config)
    assert plain["ap50"] == pytest.approx(2 / 3) and plain["min_instance_size"] == 0.0
    head = config.model.head.model_copy(update={"min_instance_size": 0.0})
    fixed = config.model_copy(update={"model": config.model.model_copy(update={"head": head})})
    kept = evaluate_regions(Thresholder(), [region], fixed, select_min_instance_size=True)
    assert kept["ap50"] == pytest.approx(2 / 3) and kept["min_instance_size"] == 0.0


def test_region_by_region_scores_come_from_the_pooled_predictions(tiny):
    """`evaluate --per-region` scores each region alone from the predictions the pooled table
    made: the same rows as a separate run on that region, for the model, a compared model and
    the Otsu floor, and the pooled AP counts every region's nuclei."""
    import numpy as np

    from napari_rat.train.datasets import EvalRegion
    from napari_rat.train.evaluation import robustness_tables

    config = tiny()
    regions = []
    for seed, n in ((0, 3), (1, 2)):
        rng = np.random.default_rng(seed)
        truth = np.zeros((48, 48), np.int32)
        for label in range(1, n + 1):
            y, x = rng.integers(4, 36, size=2)
            truth[y : y + 9, x : x + 9] = np.where(truth[y : y + 9, x : x + 9] == 0, label, 0)
        image = (truth > 0).astype(np.float32)
        image[0:2, 40:47] = 1.0  # a speck: a false positive at native spacing
        regions.append(
            EvalRegion(name=f"r{seed}", image=image[None], labels=truth, spacing=(1.0, 1.0))
        )
    args = dict(factors=[1.0, 2.0], compare=[("twin", Thresholder())])
    tables = robustness_tables(Thresholder(), regions, config, **args)
    assert len(tables.by_region) == 2 and all(len(t) == 2 for t in tables.by_region)
    for region, table in zip(regions, tables.by_region, strict=True):
        alone = robustness_tables(Thresholder(), [region], config, **args).pooled
        assert [set(r) for r in table] == [set(r) for r in alone]
        for got, want in zip(table, alone, strict=True):
            assert got == pytest.approx(want)
    pooled = robustness_tables(Thresholder(), regions, config, **args).pooled
    assert all(got == pytest.approx(want) for got, want in zip(tables.pooled, pooled, strict=True))
    # pooled AP@0.5: every region's nuclei found, one speck each -> tp / (tp + fp + fn)
    nuclei = sum(len(np.unique(r.labels)) - 1 for r in regions)
    assert tables.pooled[0]["model_ap50"] == pytest.approx(nuclei / (nuclei + 2))


def test_cancel_then_resume_continues(tiny):
    config = tiny(training={"epochs": 3}, data={"val_fraction": 0.0})
    cancel = threading.Event()
    events = []
    for event in train_events(config, cancel=cancel):
        events.append(event)
        if event.kind == "progress" and event.step == 3:
            cancel.set()
    assert events[-1].kind == "cancelled" and events[-1].step == 3
    resumed = list(train_events(config, resume=True))
    assert any("resumed at step 3" in e.message for e in resumed)
    steps = [e.step for e in resumed if e.kind == "progress"]
    assert steps[0] == 4 and resumed[-1].kind == "finished" and resumed[-1].step == 6


def test_state_is_never_half_written(tiny, tmp_path):
    config = tiny(training={"epochs": 1}, data={"val_fraction": 0.0})
    list(train_events(config))
    store = LocalStore(tmp_path / "runs/tiny/state")
    good = store.latest_path()
    assert good is not None

    class Crashing:
        def save_state(self, folder, state, is_main):
            (folder / "weights.safetensors").write_bytes(b"partial")
            raise OSError("disk full")

    with pytest.raises(OSError):
        store.save(Crashing(), {"step": 99}, {})
    assert store.latest_path() == good  # the pointer still names the complete state
    assert not (good.parent / "step-00000099").exists()


def test_init_from_checkpoint_starts_from_its_weights(tiny):
    config = tiny(training={"epochs": 1})
    list(train_events(config))
    best = config.training.output_dir + "/tiny/best.safetensors"
    trained = load_checkpoint(best).state_dict()
    # Cancelled before its first step, the fine-tuning run saves the weights it started from.
    config2 = tiny(training={"epochs": 1, "run_name": "ft"})
    cancel = threading.Event()
    cancel.set()
    events = list(train_events(config2, init_from=best, cancel=cancel))
    assert events[-1].kind == "cancelled" and events[-1].step == 0
    started = load_checkpoint(config.training.output_dir + "/ft/last.safetensors").state_dict()
    assert started.keys() == trained.keys()
    differing = [k for k in trained if not torch.equal(started[k], trained[k])]
    assert not differing, f"weights not taken from the checkpoint: {differing}"


# Another width would also fail in load_state_dict; another iteration count would load silently.
@pytest.mark.parametrize("model", [{"feature_dims": 16}, {"iters": 2}], ids=["width", "iters"])
def test_init_from_refuses_a_checkpoint_of_another_model(tiny, tmp_path, model):
    config = tiny(training={"epochs": 1}, data={"val_fraction": 0.0})
    list(train_events(config))
    last = tmp_path / "runs/tiny/last.safetensors"
    before = last.read_bytes()
    other = tiny(model=model, training={"epochs": 1, "run_name": "ft"})
    with pytest.raises(ValueError, match="model config differs from the experiment's model"):
        list(train_events(other, init_from=str(last)))
    assert last.read_bytes() == before
    assert not (tmp_path / "runs/ft/last.safetensors").exists()
