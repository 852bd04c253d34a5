"""Network architectures and the model registry (section 5 of the paper).

``get_model("VGG16", num_classes=100)`` builds the paper's CIFAR-100 VGG16 (P = 15,291,300);
``list_models()`` names every registered architecture; ``register_model`` adds your own.
"""

from .allcnn import AllCNN
from .cnn import SmallCNN
from .mlp import MLP
from .preresnet import PreResNet
from .registry import (
    count_parameters,
    get_model,
    list_models,
    model_info,
    normalize_model_name,
    register_model,
)
from .resnet import ResNet
from .vgg import VGG
from .wideresnet import WideResNet

__all__ = [
    "MLP",
    "VGG",
    "AllCNN",
    "PreResNet",
    "ResNet",
    "SmallCNN",
    "WideResNet",
    "count_parameters",
    "get_model",
    "list_models",
    "model_info",
    "normalize_model_name",
    "register_model",
]
