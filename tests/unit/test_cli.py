import subprocess
import sys

from typer.testing import CliRunner

from invguard.cli import app

runner = CliRunner()


def test_help_and_version():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "model-inversion" in r.output
    r = runner.invoke(app, ["version"])
    assert r.exit_code == 0 and r.output.startswith("invguard 0.")


def test_train_writes_a_model_and_bad_input_exits_2(tmp_path):
    out = tmp_path / "m.pt"
    r = runner.invoke(app, ["train", "--recipe", "quick", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert out.exists() and "held-out accuracy" in r.output
    # not a terminal: progress as lines (a live bar would print nothing into a log)
    assert "training mlp on digits (539 members, recipe quick)" in r.output
    epochs = [ln for ln in r.output.splitlines() if ln.startswith("training: epoch ")]
    assert epochs and epochs[0].startswith("training: epoch 1/")
    n = int(epochs[0].split("/")[1].split(",")[0])
    assert epochs[-1].startswith(f"training: epoch {n}/{n}, loss ")
    r = runner.invoke(app, ["train", "--dataset", "digitz", "--out", str(tmp_path / "x.pt")])
    assert r.exit_code == 2
    assert "unknown dataset 'digitz'" in r.output and "Traceback" not in r.output


def test_user_errors_exit_2_without_traceback(tmp_path):
    r = runner.invoke(app, ["train", "--dataset", "adult", "--arch", "cnn", "--out", str(tmp_path / "m.pt")])
    assert r.exit_code == 2 and "cnn needs images" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["train", "--recipe", "quick", "--out", str(tmp_path)])
    assert r.exit_code == 2 and "is a folder" in r.output


def test_python_dash_m_and_internal_errors_exit_4():
    r = subprocess.run([sys.executable, "-m", "invguard", "version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("invguard ")
    code = "import invguard.cli as c; c.app = lambda: 1 / 0; c.main()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (
        r.returncode == 4 and "internal error (ZeroDivisionError" in r.stderr and "Traceback" not in r.stderr
    )


def test_import_is_light():
    code = "import sys, invguard; import invguard.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
