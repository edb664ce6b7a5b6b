"""Each result says how its ellipse was drawn: the radius of its ellipse and the model's radii."""

from __future__ import annotations

import pytest

from heimdall_stream.geo import chi2_2_scale
from heimdall_stream.geojson import feature_of_kind
from heimdall_stream.models.inference import load_model
from heimdall_stream.models.registry import file_sha256
from heimdall_stream.models.routing import ModelSet
from heimdall_stream.wire.codec import localization_codec
from heimdall_stream.wire.messages import ConfidenceRadius
from tests.helpers import features_contract, tiny_features_model
from tests.unit.test_processor import _captures, _encoded, _processor


def _model(tmp_path, coverage):
    path = tmp_path / "model.onnx"
    path.write_bytes(tiny_features_model(features_contract(coverage=coverage)))
    return load_model(path, name="tiny", version="1", uri="models:/tiny/1", sha256=file_sha256(path))


def test_a_calibrated_model_s_results_carry_the_declared_radii(tmp_path):
    model = _model(tmp_path, ((0.5, 1.1), (0.6827, 1.4), (0.95, 2.9)))
    processor, _ = _processor(ModelSet.single(model))
    scored = processor.process(_encoded(_captures(2)))
    assert len(scored.results) == 2
    for result in scored.results:
        loc = localization_codec().decode(result.value)
        assert loc.ellipse.radius == pytest.approx(2.9)
        assert loc.radii == (
            ConfidenceRadius(0.6827, pytest.approx(1.4)),
            ConfidenceRadius(0.95, pytest.approx(2.9)),
        )
        assert feature_of_kind(loc.geojson, "ellipse")["properties"]["radius"] == 2.9
        # The axes are the radius times the square roots of the covariance's eigenvalues.
        major = loc.ellipse.semi_major_m / loc.ellipse.radius
        assert major >= max(loc.covariance.sigma_east_m, loc.covariance.sigma_north_m) - 1e-6


def test_a_gaussian_model_s_results_carry_the_chi2_radii(tmp_path):
    processor, _ = _processor(ModelSet.single(_model(tmp_path, ())))
    loc = localization_codec().decode(processor.process(_encoded(_captures(1))).results[0].value)
    assert loc.ellipse.radius == pytest.approx(chi2_2_scale(0.95))
    assert [(r.confidence, r.radius) for r in loc.radii] == [
        (0.6827, pytest.approx(chi2_2_scale(0.6827))),
        (0.95, pytest.approx(chi2_2_scale(0.95))),
    ]
    assert feature_of_kind(loc.geojson, "ellipse")["properties"]["radius"] == round(chi2_2_scale(0.95), 4)
