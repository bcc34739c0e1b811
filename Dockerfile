# segtrain on GPU nodes (README.md#docker-gpu-nodes):
#   docker build -t segtrain .
#   docker run --gpus all --ipc=host -v /data:/data -v $PWD/outputs:/workspace/outputs \
#       segtrain data=nifti data.root=/data/Task03_Liver trainer=gpu
# Every version comes from requirements.lock, as for `make`: a build next year installs today's packages.
# The base is pinned by its exact tag; its Python is the lock's (tests/test_lock.py checks both agree).
# torch from PyPI brings its CUDA libraries as wheels: the host needs only the NVIDIA driver (and the
# NVIDIA container toolkit for --gpus). Another CUDA build: --build-arg TORCH_SPEC="torch==2.13.0 --index-url ..."
FROM python:3.11.7-slim-bookworm

ARG TORCH_SPEC="torch==2.13.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SEGTRAIN_LOG_DIR=/workspace/outputs \
    SEGTRAIN_CACHE_DIR=/workspace/.cache/segtrain

WORKDIR /opt/segtrain
COPY requirements.lock ./
# hadolint ignore=DL3013
RUN python -m pip install --no-cache-dir -c requirements.lock pip hatchling \
    && python -m pip install --no-cache-dir -c requirements.lock ${TORCH_SPEC}

COPY pyproject.toml README.md ./
COPY segtrain ./segtrain
COPY hydra_plugins ./hydra_plugins
COPY configs ./configs
# Non-editable install with the sweep extra (Optuna, SLURM launcher); the configs ship inside the wheel.
# --no-build-isolation: the build backend is the locked hatchling installed above.
RUN python -m pip install --no-cache-dir --no-build-isolation -c requirements.lock ".[sweep]" \
    && python -c "import segtrain.cli as c, os; assert os.path.isfile(os.path.join(c.config_dir(), 'train.yaml'))"

RUN useradd --create-home --uid 1000 segtrain \
    && mkdir -p /workspace/outputs /workspace/.cache \
    && chown -R segtrain:segtrain /workspace
USER 1000:1000
WORKDIR /workspace

ENTRYPOINT ["segtrain"]
CMD []
