"""Developer sessions: ``nox -s tests extras`` (the README's test command), ``browser``, ``matrix``, ``lint``,
``build``, ``docs``, ``faults``, ``bench``, ``bench_streaming``, ``bench_mixed_precision`` and
``train_release``.

``nox -l`` lists them. Sessions other than ``tests`` are slower and documented in the README.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["tests", "extras"]
nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"

# The matrix's interpreters: pyenv installs them side by side; put each on PATH (after
# what is there already) so nox finds python3.10 ... python3.13 without `pyenv global`.
_PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
for _bin in sorted(_PYENV.glob("3.1[0-3].*/bin")):
    os.environ["PATH"] += os.pathsep + str(_bin)

ROOT = Path(__file__).parent
SHARED_DATA = ROOT.parent / "shared" / "data"
TORCH = "torch==2.13.0"  # a CPU build; a plain "torch" pulls several GB of CUDA wheels
JAX = "jax[cpu]"


def _pytest(session: nox.Session, *default_args: str) -> None:
    args = session.posargs or list(default_args)
    session.run("python", "-m", "pytest", *args, env={"TF_CPP_MIN_LOG_LEVEL": "2"})


@nox.session
def tests(session: nox.Session) -> None:
    """The fast tests and the docstring examples, TensorFlow backend (the README's test command)."""
    session.install("-e", ".[test]")
    _pytest(session, "-q", "-m", "not slow", "--doctest-modules", "src", "tests", "--ignore=tests/browser")


@nox.session
def slow(session: nox.Session) -> None:
    """The tests marked slow: training runs, subprocesses that load TensorFlow, exports (run by .ci/run)."""
    session.install("-e", ".[test]")
    _pytest(session, "-q", "-m", "slow", "tests", "--ignore=tests/browser")


@nox.session
def browser(session: nox.Session) -> None:
    """The web page driven in Debian's Chromium (apt: chromium, chromium-driver); refreshes the docs' screenshot."""
    session.install("-e", ".[test]", "selenium>=4.20")
    session.env["KERAS_PNEUMONIA_SCREENSHOT"] = str(ROOT / "docs" / "_static" / "serve_page.png")
    _pytest(session, "-q", "tests/browser")


@nox.session
def extras(session: nox.Session) -> None:
    """The tests that need more installed: DICOM ([dicom]), ONNX export ([export]), hf:// and kaggle:// ([hub]), JAX."""
    session.install("-e", ".[test,dicom,export,hub]", JAX)
    _pytest(
        session,
        "-q",
        "tests/test_dicom.py",
        "tests/test_export.py",
        "tests/test_hub.py",
        "tests/test_kaggle.py",
        "tests/test_serve.py::test_a_dicom_without_pixels_is_a_clear_error",
        "tests/test_serve.py::test_a_dicom_film_is_answered_as_predict_answers_it",
        "tests/test_distribution.py::test_data_parallel_on_two_jax_devices_matches_one",
    )


MATRIX = [
    ("3.10", "tensorflow"),
    ("3.11", "tensorflow"),
    ("3.11", "jax"),
    ("3.11", "torch"),
    ("3.12", "tensorflow"),
    ("3.13", "tensorflow"),
]


@nox.session(name="matrix")
@nox.parametrize(("python", "backend"), MATRIX, ids=[f"{p}-{b}" for p, b in MATRIX])
def matrix(session: nox.Session, backend: str) -> None:
    """The suite and the fault suite over Python 3.10-3.13 and the tensorflow / jax / torch Keras backends."""
    session.install(".[test,serve]")
    if backend == "jax":
        session.install(JAX)
    elif backend == "torch":
        session.install(TORCH)
    session.env["KERAS_BACKEND"] = backend
    session.run("python", "-c", "import keras; print('Keras', keras.__version__, 'on', keras.backend.backend())")
    # A non-editable install: with the src layout, the tests import the installed package.
    # The browser tests have their own session (they need Chromium and Selenium).
    _pytest(session, "-q", "-p", "no:cacheprovider", "tests", "--ignore=tests/browser")
    # The guarantees on this backend too: the real CLI and web app through every fault case.
    session.run("python", "tests/faults.py", env={"TF_CPP_MIN_LOG_LEVEL": "3"})


def _lowest(*extras: str) -> list[str]:
    """Every requirement of the package and of ``extras``, pinned to the lowest version pyproject.toml declares."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += [r for r in project["optional-dependencies"][extra] if not r.startswith("keras-pneumonia")]
    lowest = {}
    for requirement in requirements:
        name, _, version = requirement.partition(">=")
        lowest[name] = max(lowest.get(name, version), version, key=lambda v: tuple(map(int, v.split("."))))
    return [f"{name}=={version}" for name, version in lowest.items()]


@nox.session(python="3.11", name="keras_min")
def keras_min(session: nox.Session) -> None:
    """The suite against the lowest versions pyproject.toml declares, extras included ([serve], [dicom], [hub])."""
    session.install(".[test,serve,dicom,hub]", *_lowest("test", "serve", "dicom", "hub"), "numpy<2")
    session.run(
        "python", "-c", "import keras, tensorflow as tf; print('Keras', keras.__version__, 'TF', tf.__version__)"
    )
    _pytest(session, "-q", "-p", "no:cacheprovider", "tests")


@nox.session(python="3.11", name="export_min")
def export_min(session: nox.Session) -> None:
    """The export tests against the lowest versions the [export] extra declares (Keras 3.8)."""
    session.install(".[test,export]", *_lowest("test", "export"), "numpy<2")
    _pytest(session, "-q", "-p", "no:cacheprovider", "tests/test_export.py")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff format (check only) and ruff check."""
    session.install("ruff")
    session.run("ruff", "format", "--check", ".")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the package (settings: pyproject.toml, [tool.mypy])."""
    session.install("-e", ".", "mypy==2.4.1")
    session.run("mypy", "src/keras_pneumonia")


@nox.session
def build(session: nox.Session) -> None:
    """Builds wheel and sdist, installs the wheel in a fresh venv, loads the weights offline."""
    session.install("build")
    dist = Path(session.create_tmp()) / "dist"
    session.run("python", "-m", "build", "--outdir", str(dist), ".")
    wheel = next(dist.glob("*.whl"))
    venv = Path(session.create_tmp()) / "fresh"
    session.run("python", "-m", "venv", "--clear", str(venv))
    python = str(venv / "bin" / "python")
    session.run(python, "-m", "pip", "install", "-q", str(wheel), external=True)
    check = (
        "import keras_pneumonia as kp; kp.PneumoniaCNN().summary(); "
        "m = kp.PneumoniaCNN.from_pretrained(); print('from_pretrained OK, threshold', m.threshold)"
    )
    offline_env = {
        "KERAS_PNEUMONIA_OFFLINE": "1",
        "KERAS_HOME": str(Path(session.create_tmp()) / "empty_keras_home"),
        # Any network access fails: no proxy answers on port 9.
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    session.run(python, "-c", check, env=offline_env, external=True)
    cli = str(venv / "bin" / "keras-pneumonia")
    session.run(cli, "--version", external=True)
    # The default weights evaluate a labelled folder with no network.
    session.run(cli, "evaluate", "tests/data/chest_xray", "--json", env=offline_env, external=True)


@nox.session
def faults(session: nox.Session) -> None:
    """The fault-injection suite: the real CLI and web app through hostile inputs and faults, as a table."""
    session.install("-e", ".[serve]")
    session.run("python", "tests/faults.py", *session.posargs, env={"TF_CPP_MIN_LOG_LEVEL": "3"})


@nox.session
def docs(session: nox.Session) -> None:
    """Builds the HTML docs, nitpicky with warnings as errors (docs/conf.py), and runs their code examples."""
    session.install("-e", ".[docs,serve]")
    env = {"TF_CPP_MIN_LOG_LEVEL": "2"}
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html", env=env)
    session.run("sphinx-build", "-W", "--keep-going", "-b", "doctest", "docs", "docs/_build/doctest", env=env)


@nox.session
def bench(session: nox.Session) -> None:
    """Speed benchmarks (`benchmarks/run.py`); pass ``-- --quick`` for a reduced run (times: README)."""
    session.install("-e", ".")
    args = session.posargs or ["--json", "benchmarks/results.json"]
    session.run("python", "benchmarks/run.py", *args, env={"TF_CPP_MIN_LOG_LEVEL": "2"})


@nox.session(name="bench_streaming")
def bench_streaming(session: nox.Session) -> None:
    """Peak memory and speed of the streaming pipeline at 5k, 50k and 200k images (time: README)."""
    session.install("-e", ".")
    args = session.posargs or ["--json", "benchmarks/streaming.json"]
    session.run("python", "benchmarks/streaming.py", *args, env={"TF_CPP_MIN_LOG_LEVEL": "2"})


@nox.session(name="bench_mixed_precision")
def bench_mixed_precision(session: nox.Session) -> None:
    """float32 against mixed_bfloat16 / mixed_float16: speed, and the released weights' metrics."""
    session.install("-e", ".")
    args = session.posargs or ["--json", "benchmarks/mixed_precision.json"]
    session.run("python", "benchmarks/mixed_precision.py", *args, env={"TF_CPP_MIN_LOG_LEVEL": "2"})


@nox.session(name="train_release")
def train_release(session: nox.Session) -> None:
    """Retrains a released preset, pneumonia_cnn_v3 by default (``-- v2`` for v2); resumable, time: README."""
    session.install("-e", ".")
    release = session.posargs[0] if session.posargs else "v3"
    if release not in RELEASE_STEPS:
        session.error(f"unknown release {release!r}; choose one of {', '.join(RELEASE_STEPS)}")
    data = Path(os.environ.get("CHEST_XRAY_DIR", str(SHARED_DATA / "chest_xray_224")))
    for output, args in RELEASE_STEPS[release]:  # each step resumes where it stopped, or is done already
        if (Path(output) / "model.keras").is_file() and not (Path(output) / "backup").exists():
            session.log(f"{output} holds a finished run: step done")
            continue
        if args[0] == "fit-unmirror":  # a last step that adds the Unmirror layer (written atomically)
            command = ["keras-pneumonia", "fit-unmirror", str(data), "--output", f"{output}/model.keras", *args[1:]]
        else:
            command = ["keras-pneumonia", "train", str(data), "--output", output, *args]
            if (data / "test_dev").is_dir():  # scored every epoch for the record; never chooses anything
                command += ["--monitor", str(data / "test_dev")]
        session.run(*command, env={"TF_CPP_MIN_LOG_LEVEL": "2"})
    export = (
        "import json; from keras_pneumonia.export import export_preset; "
        f"print(json.dumps(export_preset('{output}/model.keras', 'pneumonia_cnn_{release}'), indent=2))"
    )
    session.run("python", "-c", export)


# The release recipes (docs/experiments.md): (output folder, `train` arguments, or
# "fit-unmirror" and its arguments) per step, each step starting from the one before. v3 is
# v2 fine-tuned in three steps ("v3-h", "v3-j", "v3-t" in the experiment log): black-border
# cutting and reframing augmentation, then the same at a lower rate, then the
# tilt-consistency loss; then the Unmirror layer is trained and added ("v3-v").
_V3_COMMON = ("--crop-borders", "--schedule", "cosine", "--augmentation", "robust_reframe", "--threshold", "0.5")
RELEASE_STEPS: dict[str, list[tuple[str, list[str]]]] = {
    "v2": [
        (
            "runs/release-v2",
            [
                *("--epochs", "30", "--schedule", "cosine", "--ema", "--augmentation", "strong"),
                *("--threshold", "0.5", "--seed", "1337"),
            ],
        )
    ],
    "v3": [
        (
            "runs/release-v3-1",
            [*_V3_COMMON, "--init-weights", "pneumonia_cnn_v2", "--epochs", "8", "--learning-rate", "3e-4", "--ema"]
            + ["--seed", "1337"],
        ),
        (
            "runs/release-v3-2",
            [*_V3_COMMON, "--init-weights", "runs/release-v3-1/model.keras", "--epochs", "8", "--learning-rate", "1e-4"]
            + ["--ema", "--seed", "7", "--split-seed", "1337"],
        ),
        (
            "runs/release-v3",
            [*_V3_COMMON, "--init-weights", "runs/release-v3-2/model.keras", "--epochs", "3", "--learning-rate", "1e-4"]
            + ["--consistency-weight", "1", "--consistency-degrees", "8", "--seed", "29", "--split-seed", "1337"],
        ),
        ("runs/release-v3-unmirror", ["fit-unmirror", "--weights", "runs/release-v3/model.keras", "--seed", "1337"]),
    ],
}
