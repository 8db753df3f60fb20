import json
import math

from ua3dtalk import cli
from ua3dtalk.evaluate import evaluate_model
from ua3dtalk.model import load_checkpoint


def test_heldout_report_is_complete(tiny_subject, tiny_checkpoint):
    report = evaluate_model(load_checkpoint(tiny_checkpoint), tiny_subject, size=128, max_frames=20)
    assert report["split"] == "heldout" and 0 < report["frames"] <= 20 * len(report["clips"])
    assert 5 < report["psnr"] < 60 and 0 < report["ssim"] <= 1
    assert report["lpips"] is None and "LPIPS skipped" in report["lpips_note"]
    for key in ("lmd_mouth", "mouth_open_corr", "emotion_accuracy_ground_truth", "face_detected"):
        assert key in report, key
    assert 0 <= report["emotion_accuracy_ground_truth"] <= 1
    assert report["render_fps"] > 0
    assert all(math.isfinite(c["psnr"]) for c in report["clips"])


def test_eval_command_writes_json(tiny_subject, tiny_checkpoint, tmp_path):
    out = tmp_path / "metrics.json"
    assert cli.main(["eval", "--subject", str(tiny_checkpoint), "--data", str(tiny_subject), "--out", str(out),
                     "--device", "cpu", "--max-frames", "10", "--fusion", "uniform"]) == 0
    report = json.loads(out.read_text())
    assert report["fusion"] == "uniform" and report["subject"] == str(tiny_checkpoint)


def test_eval_command_reports_a_missing_subject(tiny_subject, tmp_path, capsys):
    assert cli.main(["eval", "--subject", str(tmp_path / "nothing"), "--data", str(tiny_subject),
                     "--out", str(tmp_path / "m.json")]) == 2
    assert "error" in capsys.readouterr().err
