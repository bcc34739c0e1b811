# segtrain on GPU nodes: docker build -t segtrain . && docker run --gpus all --ipc=host \
#   -v $PWD/data:/data -v $PWD/outputs:/workspace/outputs segtrain data=nifti data.root=/data trainer=gpu
# The base image brings CUDA, cuDNN and a CUDA build of torch; segtrain's install keeps that torch.
FROM pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SEGTRAIN_LOG_DIR=/workspace/outputs \
    SEGTRAIN_CACHE_DIR=/workspace/.cache/segtrain

WORKDIR /opt/segtrain
COPY pyproject.toml README.md ./
COPY segtrain ./segtrain
COPY configs ./configs
# Non-editable install: the configs ship inside the wheel (segtrain/configs).
RUN python -m pip install --no-cache-dir . \
    && python -c "import segtrain.cli as c, os; assert os.path.isfile(os.path.join(c.config_dir(), 'train.yaml'))"

RUN useradd --create-home --uid 1000 segtrain \
    && mkdir -p /workspace/outputs /workspace/.cache \
    && chown -R segtrain:segtrain /workspace
USER 1000:1000
WORKDIR /workspace

ENTRYPOINT ["segtrain"]
CMD []
