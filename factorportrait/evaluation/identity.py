"""CSIM: identity similarity as the cosine of ArcFace embeddings (DeX-Portrait §4 "Metrics").

The network is insightface's ArcFace R50 (``w600k_r50.onnx`` of the ``buffalo_l`` pack) run by
onnxruntime, loaded from a file the caller names (:mod:`.networks`); nothing is downloaded.
Everything around it follows insightface's own recognition path
(``python-package/insightface/model_zoo/arcface_onnx.py`` and ``utils/face_align.py``):

1. five points — eye centres, nose tip, mouth corners, image-left first — here from MediaPipe's
   478 landmarks (:func:`five_points`) where insightface takes SCRFD's keypoints;
2. ``face_align.norm_crop``: the similarity (Umeyama, as ``skimage``'s
   ``SimilarityTransform.estimate``) carrying them onto ``arcface_dst`` in a 112 × 112 crop,
   and a bilinear warp with zeros outside the frame (``cv2.warpAffine``) — here in torch
   (:func:`similarity_transform`, :func:`warp_affine`);
3. ``ArcFaceONNX.get_feat``: RGB (insightface swaps its BGR frames, ``swapRB=True``; ours are
   RGB already), ``(x − mean) / std`` with mean = std = 127.5 unless the graph's first 8 nodes
   hold a ``Sub`` and a ``Mul`` (an mxnet export that normalises inside: mean 0, std 1),
   NCHW float32; the raw output is the embedding.

Pixel coordinates are continuous (pixel ``(u, v)`` covers ``[u, u+1) × [v, v+1)``, as the
tracker's landmarks); insightface's template and ``cv2`` use pixel centres at integers, so
the template is shifted by half a pixel here, which gives the same crop.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from factorportrait.evaluation.networks import PathLike, weights_file
from factorportrait.tracking import FaceTracker
from factorportrait.tracking.canonical import LEFT_EYE, MOUTH_CORNERS, NOSE_TIP, RIGHT_EYE

# insightface utils/face_align.py ``arcface_dst``: image-left eye, image-right eye, nose tip,
# image-left and image-right mouth corner, pixel-centre coordinates of a 112 x 112 crop.
ARCFACE_DST = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366),
               (41.5493, 92.3655), (70.7299, 92.2041))
NORMALISATION_NODES = 8  # arcface_onnx.py looks for Sub / Mul among the first 8 nodes


def arcface_template(size: int = 112) -> Tensor:
    """``(5, 2)`` float64: ``arcface_dst`` for a ``size`` crop (``face_align.estimate_norm``:
    scaled by ``size / 112``, or by ``size / 128`` and moved right by ``8 · ratio``), in
    continuous pixel coordinates (+0.5)."""
    if size % 112 == 0:
        ratio, shift = size / 112, 0.0
    elif size % 128 == 0:
        ratio, shift = size / 128, 8.0 * size / 128
    else:
        raise ValueError(f"ArcFace crop size must be a multiple of 112 or 128, got {size}")
    template = torch.tensor(ARCFACE_DST, dtype=torch.float64) * ratio
    template[:, 0] += shift
    return template + 0.5


def five_points(landmarks: Tensor) -> Tensor:
    """insightface's five keypoints from MediaPipe landmarks ``(..., 478, ≥2)`` -> ``(..., 5,
    2)``: the subject's right eye (image-left; mean of corners 33, 133), left eye (263, 362),
    nose tip 1, right mouth corner 61 (image-left), left one 291. Eye centres from the corners,
    not the irises, so gaze does not move the crop."""
    points = landmarks[..., :2]
    right_eye = points[..., list(RIGHT_EYE), :].mean(-2)
    left_eye = points[..., list(LEFT_EYE), :].mean(-2)
    return torch.stack([right_eye, left_eye, points[..., NOSE_TIP, :],
                        points[..., MOUTH_CORNERS[0], :], points[..., MOUTH_CORNERS[1], :]], -2)


def similarity_transform(source: Tensor, target: Tensor) -> Tensor:
    """The least-squares similarity (Umeyama 1991, reflections excluded) carrying points
    ``source (..., P, D)`` onto ``target (..., P, D)`` -> ``(..., D, D + 1)`` ``[sR | t]``
    with ``target ≈ s R source + t``; float64."""
    source, target = source.double(), target.double()
    if source.shape != target.shape or source.ndim < 2:
        raise ValueError(f"similarity_transform: source {tuple(source.shape)} and target "
                         f"{tuple(target.shape)} must both be (..., P, D)")
    src_mean, dst_mean = source.mean(-2, keepdim=True), target.mean(-2, keepdim=True)
    src, dst = source - src_mean, target - dst_mean
    covariance = dst.transpose(-1, -2) @ src / source.shape[-2]  # (..., D, D)
    u, singular, vt = torch.linalg.svd(covariance)
    signs = torch.ones_like(singular)
    signs[..., -1] = torch.where(torch.linalg.det(covariance) < 0, -1.0, 1.0)  # no reflection
    rotation = u @ torch.diag_embed(signs) @ vt
    scale = (singular * signs).sum(-1) / src.square().sum((-2, -1)) * source.shape[-2]
    linear = scale[..., None, None] * rotation
    translation = dst_mean.squeeze(-2) - (linear @ src_mean.transpose(-1, -2)).squeeze(-1)
    return torch.cat([linear, translation[..., None]], -1)


def warp_affine(images: Tensor, matrix: Tensor, size: tuple[int, int]) -> Tensor:
    """``images (N, C, H, W)`` float warped by ``matrix (N, 2, 3)`` (source pixels ->
    output pixels, continuous coordinates) into ``(N, C, h, w)`` for ``size = (h, w)``:
    bilinear, zeros outside the source (``cv2.warpAffine(img, M, (w, h), borderValue=0)``)."""
    if images.ndim != 4 or matrix.shape != (images.shape[0], 2, 3):
        raise ValueError(f"warp_affine: expected images (N, C, H, W) and matrices (N, 2, 3), "
                         f"got {tuple(images.shape)} and {tuple(matrix.shape)}")
    height, width = images.shape[-2:]
    full = torch.cat([matrix.double(), matrix.new_tensor([0.0, 0.0, 1.0]).double()
                      .expand(matrix.shape[0], 1, 3)], 1)
    inverse = torch.linalg.inv(full)[:, :2]  # output -> source, (N, 2, 3)
    ys, xs = torch.meshgrid(torch.arange(size[0], dtype=torch.float64) + 0.5,
                            torch.arange(size[1], dtype=torch.float64) + 0.5, indexing="ij")
    centres = torch.stack([xs, ys, torch.ones_like(xs)], -1)  # (h, w, 3)
    source = torch.einsum("nij,hwj->nhwi", inverse, centres)  # (N, h, w, 2)
    grid = source / source.new_tensor([width, height]) * 2 - 1
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros",
                         align_corners=False)


def align_faces(frames: Tensor, landmarks: Tensor, size: int = 112) -> Tensor:
    """ArcFace crops ``(N, 3, size, size)`` float32 in 0..255 (RGB) of ``frames uint8 (N, H,
    W, 3)`` with MediaPipe ``landmarks (N, 478, ≥2)`` frame pixels (``norm_crop``)."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or landmarks.shape[0] != frames.shape[0]:
        raise ValueError(f"align_faces: expected frames (N, H, W, 3) and landmarks (N, 478, "
                         f"D), got {tuple(frames.shape)} and {tuple(landmarks.shape)}")
    matrix = similarity_transform(five_points(landmarks), arcface_template(size)
                                  .expand(frames.shape[0], 5, 2))
    pixels = frames.permute(0, 3, 1, 2).float()
    return warp_affine(pixels, matrix, (size, size))


def _varint(data: Any, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _messages(data: Any, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The length-delimited fields ``(number, start, end)`` of a protobuf message."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            yield number, pos, pos + length
            pos += length
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}: not an ONNX model")


def leading_node_names(path: PathLike, count: int = NORMALISATION_NODES) -> list[str]:
    """The names of the first ``count`` nodes of an ONNX model's graph, read from the
    protobuf wire format (``ModelProto.graph`` = 7, ``GraphProto.node`` = 1, ``NodeProto.name``
    = 3) without the ``onnx`` package."""
    names: list[str] = []
    with open(path, "rb") as handle, \
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        for number, start, end in _messages(data, 0, len(data)):
            if number != 7:
                continue
            for field, node_start, node_end in _messages(data, start, end):
                if field == 1:
                    names.append(next((bytes(data[a:b]).decode() for n, a, b in
                                       _messages(data, node_start, node_end) if n == 3), ""))
                    if len(names) == count:
                        return names
    return names


def input_normalisation(node_names: list[str]) -> tuple[float, float]:
    """``(mean, std)`` of ``ArcFaceONNX.__init__``: 0, 1 when the leading nodes hold a
    ``Sub``/``_minus`` and a ``Mul``/``_mul`` (normalisation inside the graph), else 127.5."""
    subtracts = any(name.startswith(("Sub", "_minus")) for name in node_names)
    multiplies = any(name.startswith(("Mul", "_mul")) for name in node_names)
    return (0.0, 1.0) if subtracts and multiplies else (127.5, 127.5)


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("CSIM runs ArcFace with onnxruntime: pip install onnxruntime (part "
                          "of factorportrait's dependencies)") from err
    return onnxruntime


@dataclass(frozen=True, eq=False)
class ArcFace:
    """An ArcFace ONNX network: ``session`` (an ``onnxruntime.InferenceSession``), its
    ``input_name`` and square ``input_size``, and the input ``mean``/``std``. Build it with
    :func:`load_arcface`; call it on aligned crops."""

    session: Any
    input_name: str
    input_size: int
    mean: float
    std: float
    batch: int | None = None  # the graph's fixed batch size, None when dynamic

    def __call__(self, crops: Tensor) -> Tensor:
        """Embeddings ``(N, E)`` float32 of aligned RGB crops ``(N, 3, S, S)`` in 0..255."""
        if crops.ndim != 4 or tuple(crops.shape[1:]) != (3, self.input_size, self.input_size) \
                or crops.shape[0] == 0:
            raise ValueError(f"ArcFace: expected crops (N, 3, {self.input_size}, "
                             f"{self.input_size}), got {tuple(crops.shape)}")
        blob = ((crops.float() - self.mean) / self.std).numpy()
        step = self.batch or max(len(blob), 1)
        outputs = [self.session.run(None, {self.input_name: blob[i:i + step]})[0]
                   for i in range(0, len(blob), step)]
        return torch.cat([torch.from_numpy(out).float().reshape(len(out), -1)
                          for out in outputs])


def load_arcface(path: PathLike | None = None, providers: list[str] | None = None) -> ArcFace:
    """``w600k_r50.onnx`` at ``path`` or a default location (:func:`networks.weights_file`;
    ``MissingWeightsError`` when nowhere); CPU unless ``providers`` are given."""
    file = weights_file("arcface", path)
    ort = _import_onnxruntime()
    try:
        session = ort.InferenceSession(str(file), providers=providers or
                                       ["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime's own errors: InvalidProtobuf, Fail, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{file}: not a loadable ONNX model ({reason})") from err
    spec = session.get_inputs()[0]
    shape = list(spec.shape)
    if len(shape) != 4 or not all(isinstance(s, int) for s in shape[2:]) or \
            shape[2] != shape[3]:
        raise ValueError(f"{file}: expected an NCHW input with a fixed square size, got "
                         f"{spec.name} {shape}")
    if len(session.get_outputs()) != 1:
        raise ValueError(f"{file}: expected one output (the embedding), got "
                         f"{len(session.get_outputs())}")
    mean, std = input_normalisation(leading_node_names(file))
    batch = shape[0] if isinstance(shape[0], int) else None
    return ArcFace(session, spec.name, shape[2], mean, std, batch)


def face_embeddings(frames: Tensor, network: ArcFace, tracker: FaceTracker | None = None, *,
                    landmarks: Tensor | None = None, name: str = "frames") -> Tensor:
    """ArcFace embeddings ``(N, E)`` of the main face in each of ``frames uint8 (N, H, W, 3)``.

    Landmarks ``(N, 478, ≥2)`` come from ``landmarks`` (e.g. ``FaceTrack.landmarks`` of a
    video tracked once and reused), else every frame is tracked on its own by ``tracker`` (a
    :class:`~factorportrait.tracking.FaceTracker`; one is started when None); a frame without
    a face raises ``NoFaceError`` naming ``name`` and the frame.
    """
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{name}: expected uint8 (N, H, W, 3) RGB frames, got {frames.dtype} "
                         f"{tuple(frames.shape)}")
    if landmarks is None:
        landmarks = _track_each(frames, tracker, name)
    elif landmarks.shape[0] != frames.shape[0]:
        raise ValueError(f"{name}: {landmarks.shape[0]} landmark frames for "
                         f"{frames.shape[0]} frames")
    return network(align_faces(frames, landmarks, network.input_size))


def _track_each(frames: Tensor, tracker: FaceTracker | None, name: str) -> Tensor:
    """``(N, 478, 3)`` landmarks of each frame tracked alone."""
    own = tracker is None
    tracker = FaceTracker() if own else tracker
    try:
        return torch.cat([tracker.track_image(frame, name=f"{name} frame {index}").landmarks
                          for index, frame in enumerate(frames)])
    finally:
        if own:
            tracker.close()


def cosine_similarity(embeddings: Tensor, reference: Tensor) -> Tensor:
    """Cosine similarity ``(N,)`` of embeddings ``(N, E)`` to ``reference (E,)``
    (``ArcFaceONNX.compute_sim``)."""
    return F.cosine_similarity(embeddings.double(), reference.double()[None], dim=-1).float()


def csim(generated: Tensor, reference: Tensor, network: ArcFace,
         tracker: FaceTracker | None = None, *,
         generated_landmarks: Tensor | None = None,
         reference_landmarks: Tensor | None = None) -> Tensor:
    """CSIM per frame ``(N,)``: the cosine similarity of each generated frame's ArcFace
    embedding (``generated uint8 (N, H, W, 3)``) to the reference portrait's (``reference
    uint8 (H', W', 3)``); average over frames for the paper's number. Landmarks are tracked
    (``tracker``) unless given, ``(N, 478, ≥2)`` and ``(478, ≥2)``."""
    reference = torch.as_tensor(reference)
    if reference.ndim != 3:
        raise ValueError(f"reference: expected one uint8 (H, W, 3) image, got "
                         f"{tuple(reference.shape)}")
    own = tracker is None
    tracker = FaceTracker() if own else tracker
    try:
        target = face_embeddings(reference[None], network, tracker, name="reference",
                                 landmarks=None if reference_landmarks is None
                                 else reference_landmarks[None])
        embeddings = face_embeddings(generated, network, tracker, name="generated",
                                     landmarks=generated_landmarks)
    finally:
        if own:
            tracker.close()
    return cosine_similarity(embeddings, target[0])
