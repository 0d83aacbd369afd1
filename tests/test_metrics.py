"""ConfusionMatrix: hand-computed scores, ignore pixels, absent classes, accumulation, the Cityscapes
evaluator's formula, and the all-reduce over processes."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nlseg.data.cityscapes import CITYSCAPES_LABELS, Cityscapes
from nlseg.engine.metrics import ConfusionMatrix


def _nan_equal(a: list[float], b: list[float]) -> bool:
    return all((math.isnan(x) and math.isnan(y)) or x == pytest.approx(y, abs=1e-9) for x, y in zip(a, b))


def test_hand_computed_three_classes():
    target = torch.tensor([0, 0, 0, 1, 1, 2, 2, 255])
    pred = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    cm = ConfusionMatrix(3)
    cm.update(pred, target)
    # rows = ground truth, columns = prediction; the pixel with target 255 is dropped.
    assert cm.matrix.tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 1]]
    scores = cm.compute()
    # IoU = TP / (gt + pred - TP): 2/(3+3-2), 1/(2+2-1), 1/(2+2-1)
    assert scores["per_class_iou"] == pytest.approx([50.0, 100 / 3, 100 / 3])
    assert scores["mIoU"] == pytest.approx(100 * (0.5 + 1 / 3 + 1 / 3) / 3)  # 38.888...
    # Acc = TP / gt: 2/3, 1/2, 1/2
    assert scores["per_class_acc"] == pytest.approx([200 / 3, 50.0, 50.0])
    assert scores["mAcc"] == pytest.approx(100 * (2 / 3 + 0.5 + 0.5) / 3)  # 55.555...
    assert scores["aAcc"] == pytest.approx(100 * 4 / 7)


def test_ignored_pixels_change_nothing_whatever_is_predicted():
    target = torch.tensor([[0, 1], [1, 0]])
    pred = torch.tensor([[0, 1], [0, 0]])
    base = ConfusionMatrix(2)
    base.update(pred, target)
    padded = ConfusionMatrix(2)
    # extra ignored pixels, with predictions that would be wrong (and one out of range)
    padded.update(torch.cat([pred, torch.tensor([[1, 7]])]), torch.cat([target, torch.tensor([[255, 255]])]))
    assert torch.equal(base.matrix, padded.matrix)
    assert base.compute() == padded.compute()


def test_absent_classes():
    # class 2 never in the ground truth but predicted once; class 3 in neither.
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 0, 1, 1]))
    scores = cm.compute()
    iou, acc = scores["per_class_iou"], scores["per_class_acc"]
    assert iou[:3] == pytest.approx([50.0, 100.0, 0.0]) and math.isnan(iou[3])
    assert acc[:2] == pytest.approx([50.0, 100.0]) and math.isnan(acc[2]) and math.isnan(acc[3])
    assert scores["mIoU"] == pytest.approx(50.0)  # (0.5 + 1 + 0) / 3: the predicted-only class counts
    assert scores["mAcc"] == pytest.approx(75.0)  # (0.5 + 1) / 2: classes present in the ground truth
    assert scores["aAcc"] == pytest.approx(75.0)


def test_empty_matrix_scores_are_nan():
    scores = ConfusionMatrix(3).compute()
    assert all(math.isnan(scores[k]) for k in ("mIoU", "mAcc", "aAcc"))
    assert all(math.isnan(v) for v in scores["per_class_iou"])


def test_accumulating_updates_equals_one_update_over_the_concatenation():
    torch.manual_seed(0)
    k = 5
    batches = [(torch.randint(0, k, (2, 7, 9)), torch.randint(0, k + 1, (2, 7, 9))) for _ in range(3)]
    batches = [(p, torch.where(t == k, 255, t)) for p, t in batches]
    many = ConfusionMatrix(k)
    for pred, target in batches:
        many.update(pred, target)
    one = ConfusionMatrix(k)
    one.update(torch.cat([p.flatten() for p, _ in batches]), torch.cat([t.flatten() for _, t in batches]))
    assert torch.equal(many.matrix, one.matrix)
    assert many.matrix.sum() == sum(int((t != 255).sum()) for _, t in batches)
    many.reset()
    assert many.matrix.sum() == 0


def test_bad_inputs_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="shapes differ"):
        cm.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="argmax"):
        cm.update(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"target values must be in 0..2; found \[3, 9\]"):
        cm.update(torch.zeros(3, dtype=torch.long), torch.tensor([3, 9, 0]))
    with pytest.raises(ValueError, match=r"pred values must be in 0..2; found \[-1\]"):
        cm.update(torch.tensor([-1, 0]), torch.tensor([0, 0]))


def _evaluator_iou(gt_ids: np.ndarray, pred_ids: np.ndarray) -> dict[int, float]:
    """IoU per evaluated label id as cityscapesScripts computes it, written out independently:
    one confusion matrix over label ids; TP the diagonal, FN the rest of the row, FP the rest of
    the column restricted to rows of labels that are not ignored in evaluation; 0/0 -> NaN."""
    conf = np.zeros((34, 34), dtype=np.int64)
    np.add.at(conf, (gt_ids.ravel(), pred_ids.ravel()), 1)
    evaluated = [label.id for label in CITYSCAPES_LABELS if 0 <= label.train_id < 255]
    scores = {}
    for c in evaluated:
        tp = conf[c, c]
        fn = conf[c].sum() - tp
        fp = conf[[r for r in evaluated if r != c], c].sum()
        scores[c] = math.nan if tp + fp + fn == 0 else tp / (tp + fp + fn)
    return scores


def test_matches_cityscapes_evaluator_formula():
    rng = np.random.default_rng(0)
    # ground truth: all 34 ids except those of 'truck' (27) and 'train' (31); predictions never
    # 'bus' (train id 15) -> truck is predicted but absent (IoU 0), train absent from both (NaN).
    gt_ids = rng.choice([i for i in range(34) if i not in (27, 31)], size=(3, 20, 30))
    pred_train = rng.choice([t for t in range(19) if t not in (15, 16)], size=(3, 20, 30))
    pred_ids = Cityscapes.label_ids_from_train_ids(torch.from_numpy(pred_train)).numpy()
    expected = _evaluator_iou(gt_ids, pred_ids)

    cm = ConfusionMatrix(19)
    for gt, pred in zip(gt_ids, pred_train):
        cm.update(torch.from_numpy(pred), torch.from_numpy(Cityscapes.label_map[gt]))
    scores = cm.compute()
    ours = {Cityscapes.train_id_to_label_id[t]: v / 100 for t, v in enumerate(scores["per_class_iou"])}
    assert _nan_equal([ours[c] for c in expected], list(expected.values()))
    assert ours[27] == 0.0 and math.isnan(ours[31])
    assert scores["mIoU"] / 100 == pytest.approx(np.nanmean(list(expected.values())))


def _reduce_worker(rank: int, store: str, shards: list, out: mp.Queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    cm = ConfusionMatrix(4)
    pred, target = shards[rank]
    cm.update(pred, target)
    cm.reduce()
    out.put((rank, cm.matrix.tolist()))  # plain lists: tensors would be shared by file descriptor
    dist.destroy_process_group()


def test_reduce_sums_over_processes(tmp_path):
    torch.manual_seed(1)
    shards = [(torch.randint(0, 4, (50,)), torch.randint(0, 4, (50,))) for _ in range(2)]
    expected = ConfusionMatrix(4)
    for pred, target in shards:
        expected.update(pred, target)
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_reduce_worker, args=(r, str(tmp_path / "store"), shards, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == expected.matrix.tolist() and results[1] == expected.matrix.tolist()


def test_reduce_without_distributed_is_a_no_op():
    cm = ConfusionMatrix(2)
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))
    before = cm.matrix.clone()
    cm.reduce()
    assert torch.equal(cm.matrix, before)
