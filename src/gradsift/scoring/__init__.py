"""Scorers: one score per training sample from its gradients, higher = more detrimental.

Outlier detectors (``outliers``), the influence family (``influence``, ``compressed``, ``kfac``: K-FAC / EK-FAC,
``tracin``: TracInCP over checkpoints, ``trak``: TRAK), label-quality scores (``label_quality``) and the random
baseline (``random``); every scorer has the :class:`Scorer` interface. ``lds`` holds the linear datamodeling score.
"""

from gradsift.lazy import lazy_exports

_EXPORTS = {
    "Scorer": ".base",
    "ScoringInputs": ".base",
    "IsolationForestScorer": ".outliers",
    "NormScorer": ".outliers",
    "OneClassSVMScorer": ".outliers",
    "PerClassIsolationForest": ".outliers",
    "ExactInfluenceScorer": ".influence",
    "CompressedInfluenceScorer": ".influence",
    "GradientTracingScorer": ".influence",
    "LiSSAScorer": ".influence",
    "SelfLiSSAScorer": ".influence",
    "DataInfScorer": ".influence",
    "SelfDataInfScorer": ".influence",
    "ScoreTimeCompressedInfluenceScorer": ".compressed",
    "LabelQualityScorer": ".label_quality",
    "RandomScorer": ".random",
    "KFACScorer": ".kfac",
    "EKFACScorer": ".kfac",
    "TRAKScorer": ".trak",
    "TracInCPScorer": ".tracin",
    "CheckpointInputs": ".checkpoints",
    "LinearDatamodelingScore": ".lds",
    "linear_datamodeling_score": ".lds",
    "class_detection_metrics": ".class_detection",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
