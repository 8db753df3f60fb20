# UA-3DTalk as a Hugging Face Docker Space (GPU hardware: see README, "Hugging Face Space").
#
# Base image: torch 2.13.0 wheels on PyPI are built against CUDA 13.0, and torch's
# extension builder needs an nvcc of the same major version, so the CUDA 13.0 *devel*
# image supplies the compiler that builds gsplat's CUDA code here, at image build time,
# instead of at the first request. Ubuntu 24.04 brings Python 3.12.
FROM nvidia/cuda:13.0.1-devel-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TORCH_EXTENSIONS_DIR=/opt/torch_extensions \
    TORCH_CUDA_ARCH_LIST="7.5;8.0;8.6;8.9;9.0+PTX" \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    UA3DTALK_MAX_SECONDS=30

# Python in a venv (Ubuntu's system pip is externally managed); libgl/glib for OpenCV.
# The base image's default user "ubuntu" holds uid 1000, which Spaces require for "user".
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.12 python3.12-venv python3.12-dev \
      build-essential libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && python3.12 -m venv /opt/venv \
 && (userdel -r ubuntu 2>/dev/null || true) \
 && useradd -m -u 1000 user

WORKDIR /home/user/app
COPY --chown=1000:1000 . /home/user/app

# The same install script that CI (.ci/run) runs: espeak-ng + the pinned Python stack.
RUN bash scripts/install.sh

# Compile gsplat's CUDA rasterizer and our fusion kernel now (no GPU needed to compile for the listed
# architectures). TORCH_CUDA_ARCH_LIST stays set at run time so torch's JIT loader
# finds the same build and does not recompile; the user owns the build folder
# because the loader takes a lock file there.
RUN MAX_JOBS=4 python -c "from gsplat.cuda._backend import _C; assert _C is not None, 'gsplat CUDA build failed'" \
 && python -c "from ua3dtalk.fusion_kernel import load_extension; assert load_extension(), 'fusion kernel build failed'" \
 && chown -R 1000:1000 /opt/torch_extensions \
 && python -c "from ua3dtalk.hub import list_bundled; s = list_bundled(); assert s, 'no bundled subject'; print('bundled subjects:', s)"

USER 1000
ENV HOME=/home/user
EXPOSE 7860
CMD ["python", "app.py"]
