"""Classifiers trained on ImageSets: Classification Accuracy Score on real data, and the domain feature extractor.

``train_classifier`` fits a small-input ResNet-18 (16–64 px) or any torchvision model on a set and writes a
safetensors checkpoint with its classes and preprocessing; ``evaluate_classifier`` scores it on a test set;
``penultimate_features`` is the ``domain:<checkpoint>`` extractor of the metrics engine.
"""

from imgsynth.classifier.architectures import SMALL_RESNET, ClassifierError, SmallInputResNet, build_model
from imgsynth.classifier.checkpoint import LoadedClassifier, load_classifier
from imgsynth.classifier.evaluation import ClassifierReport, classification_scores, evaluate_classifier
from imgsynth.classifier.inference import penultimate_features, predict
from imgsynth.classifier.preprocessing import Augmentation, Preprocessing
from imgsynth.classifier.config import ClassifierConfig
from imgsynth.classifier.training import train_classifier

__all__ = [
    "SMALL_RESNET", "Augmentation", "ClassifierConfig", "ClassifierError", "ClassifierReport", "LoadedClassifier",
    "Preprocessing", "SmallInputResNet", "build_model", "classification_scores", "evaluate_classifier",
    "load_classifier", "penultimate_features", "predict", "train_classifier",
]
