"""Mask -> instances: connected components, tight boxes, RLE (pycocotools), polygons (OpenCV; shapely, imported
only for the rare component with holes). pycocotools and shapely are imported where used: a polygon conversion
needs neither."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from shapely.geometry import Polygon


def encode_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a 2-D mask, counts as str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def decode_rle(rle: dict) -> np.ndarray:
    """Bool HxW mask of a compressed (str or bytes counts) or uncompressed COCO RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(rle.get("counts"), list):
        rle = mask_utils.frPyObjects(rle, *rle["size"])
    elif isinstance(rle["counts"], str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return mask_utils.decode(rle).astype(bool)


@dataclass
class MaskCrop:
    """A mask kept as its bounding extent: `crop` (h, w) bool at (`row`, `col`) of a height x width image (all
    False outside). What SAM inference hands to the writers instead of full-size masks."""

    row: int
    col: int
    crop: np.ndarray
    height: int
    width: int

    @property
    def region(self) -> tuple[slice, slice]:
        """The crop's rows and columns in the full image."""
        return slice(self.row, self.row + self.crop.shape[0]), slice(self.col, self.col + self.crop.shape[1])

    def full(self) -> np.ndarray:
        """The HxW bool mask."""
        out = np.zeros((self.height, self.width), bool)
        out[self.region] = self.crop
        return out

    def rle(self) -> dict:
        """Compressed COCO RLE (bytes counts) of the full mask, byte-identical to encoding `full()`, computed from a
        strip of the crop's columns only (COCO RLE runs down columns)."""
        from pycocotools import mask as mask_utils

        h, w = self.crop.shape
        size = self.height * self.width
        if h == 0 or w == 0:
            counts = np.array([size], np.int64)
        else:
            strip = np.zeros((w, self.height), np.int8)  # the crop's columns, full height, column-major
            strip[:, self.row : self.row + h] = self.crop.T
            flat = strip.ravel()
            counts = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]]))
            if flat[0]:
                counts = np.concatenate([[0], counts])
            counts[0] += self.col * self.height
            tail = (self.width - self.col - w) * self.height
            if len(counts) % 2:  # the last run is background
                counts[-1] += tail
            elif tail:
                counts = np.concatenate([counts, [tail]])
        return mask_utils.frPyObjects({"size": [self.height, self.width], "counts": counts.tolist()},
                                      self.height, self.width)


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons the way pycocotools does."""
    from pycocotools import mask as mask_utils

    if not polygons:
        return np.zeros((height, width), bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))).astype(bool)


def _cut_holes(poly: Polygon) -> list[Polygon]:
    """Split a polygon with holes into hole-free pieces whose union is the polygon (COCO/YOLO have no holes)."""
    from shapely.geometry import LineString
    from shapely.ops import split

    todo, done = [poly], []
    while todo:
        p = todo.pop()
        if p.is_empty:
            continue
        if p.geom_type in ("MultiPolygon", "GeometryCollection"):
            todo.extend(g for g in p.geoms if g.geom_type == "Polygon")
            continue
        if not p.interiors:
            done.append(p)
            continue
        x = p.interiors[0].centroid.x
        _, miny, _, maxy = p.bounds
        todo.extend(split(p, LineString([(x, miny - 1), (x, maxy + 1)])).geoms)
    return done


def _simplify(poly: Polygon, tolerance: float) -> Polygon:
    """Drop near-collinear vertices: Douglas-Peucker (fast), or the topology-preserving variant if that breaks the ring."""
    simple = poly.simplify(tolerance, preserve_topology=False)
    if simple.is_empty or not simple.is_valid or simple.geom_type != poly.geom_type:
        simple = poly.simplify(tolerance)
    return simple


def _edge_rings(component: np.ndarray) -> tuple[list[np.ndarray], bool]:
    """Pixel-edge outlines of a component, traced by OpenCV on the mask upscaled 2x (nearest): there every boundary
    pixel of the original has an inner and an outer half, and the half on the boundary maps to the pixel's edge
    ((x2 + 1) // 2 - 1), so the rings follow the pixel edges exactly. Returns (outer rings, has holes)."""
    if component.size == 0:
        return [], False
    pixels = component.view(np.uint8) if component.dtype == bool else component.astype(np.uint8)
    padded = cv2.copyMakeBorder(pixels, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)  # one pass (np.pad takes several)
    up = cv2.resize(padded, None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return [], False
    rings, holes = [], False
    for contour, (_, _, child, parent) in zip(contours, hierarchy[0]):
        if parent != -1:
            continue
        holes |= child != -1
        pts = (contour.reshape(-1, 2) + 1) // 2 - 1
        moved = np.empty(len(pts), bool)  # the 2x trace repeats corner points: keep each that differs from the last
        moved[0] = (pts[0] != pts[-1]).any()
        moved[1:] = (pts[1:] != pts[:-1]).any(axis=1)
        pts = pts[moved]
        if len(pts) >= 3:
            rings.append(pts)
    return rings, holes


def component_polygons(component: np.ndarray, simplify: float = 0.2) -> list[list[float]]:
    """Hole-free polygons (pixel-edge outline) of one component; their pycocotools rasterisation is the component.

    Without holes (nearly every defect), the rings are OpenCV's pixel-edge trace as is; a component with holes goes
    through shapely, which cuts it into hole-free pieces (COCO and YOLO polygons have no holes)."""
    rings, holes = _edge_rings(component)
    if not holes:
        return [r.astype(float).ravel().tolist() for r in rings]
    from shapely.geometry import Polygon

    contours, hierarchy = cv2.findContours(component.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    hierarchy = hierarchy[0]
    out: list[list[float]] = []
    for i, contour in enumerate(contours):
        if hierarchy[i][3] != -1:  # a hole: handled with its parent
            continue
        holes, j = [], hierarchy[i][2]
        while j != -1:
            hole = contours[j].reshape(-1, 2) + 0.5
            if len(hole) >= 3:
                holes.append(hole)
            j = hierarchy[j][0]
        ext = contour.reshape(-1, 2) + 0.5  # pixel centres; the 0.5 buffer below moves them to pixel edges
        if len(ext) < 3:  # a dot or a 1-px line: any ring, the buffer gives it area
            ext = np.vstack([ext, ext[:1] + 1e-3])[:3] if len(ext) == 2 else np.repeat(ext[:1], 3, 0) + [[0, 0], [1e-3, 0], [0, 1e-3]]
        poly = Polygon(ext, holes).buffer(0.5, quad_segs=1)
        if simplify:
            poly = _simplify(poly, simplify)
        for piece in _cut_holes(poly):
            coords = np.asarray(piece.exterior.coords)[:-1]
            if len(coords) >= 3:
                out.append(np.round(coords, 2).ravel().tolist())
    return out


def inner_point(component: np.ndarray) -> tuple[float, float]:
    """The pixel farthest from the component's border (distance-transform maximum), as x, y.

    Ties (a plateau, e.g. along a rectangle's axis) go to the tied pixel nearest their mean: the middle."""
    dist = cv2.distanceTransform(np.pad(component.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    ties = np.argwhere(dist >= dist.max() - 1e-3)
    y, x = ties[np.argmin(((ties - ties.mean(axis=0)) ** 2).sum(axis=1))]
    return float(x), float(y)


def label_components(mask: np.ndarray, few: int = 16) -> tuple[int, np.ndarray, np.ndarray]:
    """cv2.connectedComponentsWithStats (8-connectivity): (n labels incl. background, labels, stats).

    OpenCV's stats pass costs several times the labelling itself, so for a few components the stats
    come from cv2.boundingRect / cv2.countNonZero per label instead (same numbers); a single component's are
    the mask's own."""
    ltype = cv2.CV_16U if mask.size < 4 * 65000 else cv2.CV_32S  # an 8-connected component takes >= 4 px of area
    n, labels = cv2.connectedComponents(mask, connectivity=8, ltype=ltype)
    if n - 1 > few:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=ltype)
        return n, labels, stats
    stats = np.zeros((n, 5), np.int64)
    if n == 2:  # every set pixel is label 1
        stats[1, :4] = cv2.boundingRect(mask)
        stats[1, 4] = cv2.countNonZero(mask)
        return n, labels, stats
    for k in range(1, n):
        comp = (labels == k).view(np.uint8)
        stats[k, :4] = cv2.boundingRect(comp)
        x, y, w, h = stats[k, :4]
        stats[k, 4] = cv2.countNonZero(comp[y : y + h, x : x + w])
    return n, labels, stats
