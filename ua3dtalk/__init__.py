"""UA-3DTalk: uncertainty-aware 3D emotional talking faces rendered from Gaussians."""
from ua3dtalk.config import EMOTIONS, ModelConfig, preset

__version__ = "0.1.0"
__all__ = ["EMOTIONS", "ModelConfig", "preset", "__version__"]
