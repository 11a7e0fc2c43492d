"""blt_hf: the Byte Latent Transformer as a transformers model package."""

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "src/blt_hf/__init__.py").read_text()).group(1)

setup(
    name="blt_hf",
    version=VERSION,
    description="Byte Latent Transformer (BLT) for Hugging Face transformers: exact, cached generation, every patching mode",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    python_requires=">=3.10",
    install_requires=[
        # install torch==2.13.0 first on CPU machines: an open range pulls CUDA builds
        "torch>=2.5",
        "transformers>=5.23.0,<6",
        "safetensors>=0.4",
        "huggingface-hub>=1.0",
    ],
    extras_require={
        # the model needs none of these; training, evaluation and plots name the extra they miss
        "train": ["accelerate>=1.0", "datasets>=3.0"],
        "eval": ["datasets>=3.0", "evaluate>=0.4", "lm-eval[hf]>=0.4.13,<0.5", "matplotlib>=3.7"],
        "dev": ["pytest>=8", "hypothesis>=6.100", "matplotlib>=3.7", "ruff>=0.6", "peft>=0.13"],
    },
    entry_points={"console_scripts": ["blt-hf=blt_hf.tools.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
