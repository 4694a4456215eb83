"""imgsynth: labeled synthetic image datasets from diffusion models, and model-collapse studies."""

from imgsynth.imageset import ImageSet, ImageSetError, ImageSetWriter, Sample, concatenate

__version__ = "0.1.0"
__all__ = ["ImageSet", "ImageSetError", "ImageSetWriter", "Sample", "concatenate", "__version__"]
