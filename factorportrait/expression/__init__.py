"""Expression codes for FactorPortrait (§4.1; DeX-Portrait §3.2): face crops, augmentations,
synthetic expression sets, training and evaluation of our encoder
(``factorportrait.models.expression_encoder``), and code sources (our encoder, files, any user
module) producing the pipeline's ``(B, T, 128)`` codes. See docs/expression.md.

Modules: ``crop`` (face boxes, crops), ``augment``, ``sets`` (rendered expression sets),
``batches`` (training pairs), ``losses``, ``train``, ``probes`` + ``evaluate`` +
``dataset_eval`` (evaluation), ``codes`` (code sources).
"""

from factorportrait.expression.codes import (
    EncoderCodeSource,
    ExpressionCodeSource,
    ModuleCodeSource,
    batch_codes,
    check_codes,
    codes_from_file,
    encode_video,
)
from factorportrait.expression.crop import FaceBoxes, boxes_from_xyxy, crop_faces, face_boxes

__all__ = [
    "EncoderCodeSource", "ExpressionCodeSource", "FaceBoxes", "ModuleCodeSource",
    "batch_codes", "boxes_from_xyxy", "check_codes", "codes_from_file", "crop_faces",
    "encode_video", "face_boxes",
]
