"""load_onnx / describe_input / save_onnx: real models load; every bad input gives a clear GraphError."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import uses_external_data
from PIL import Image
from torch import nn

from edge_resnet.errors import GraphError
from edge_resnet.graph import InputInfo, describe_input, load_onnx, save_onnx
from edge_resnet.graph import load as load_module


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def export(path: Path, dynamic: bool = True, **kwargs) -> Path:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # legacy exporter on purpose: it keeps BN
        torch.onnx.export(
            TinyNet().eval(),
            (torch.randn(1, 3, 32, 32),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}} if dynamic else None,
            **kwargs,
        )
    return path


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    return export(tmp_path / "tiny.onnx")


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def bad(path: Path) -> str:
    with pytest.raises(GraphError) as exc:
        load_onnx(path)
    assert exc.value.fix, "every GraphError says how to fix it"
    assert "Traceback" not in str(exc.value)
    return str(exc.value)


def save_helper_model(path: Path, inputs, nodes, outputs, inits=(), opset: int = 17) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


# --- good files ------------------------------------------------------------------------------------


def test_loads_an_exported_model_checked_and_shape_inferred(model_path):
    m = load_onnx(model_path)
    assert isinstance(m, onnx.ModelProto)
    assert len(m.graph.value_info) > 0  # shape inference ran
    assert describe_input(m) == InputInfo(
        name="input", channels=3, height=32, width=32, dynamic_batch=True, batch=None, dtype="float32"
    )
    assert load_onnx(str(model_path)).graph.node  # str paths too


def test_fixed_batch_and_initializers_listed_as_inputs(tmp_path):
    m = load_onnx(export(tmp_path / "m.onnx", dynamic=False, keep_initializers_as_inputs=True))
    assert len(m.graph.input) > 1  # the weights are inputs too: the image input is the non-initializer one
    info = describe_input(m)
    assert (info.name, info.dynamic_batch, info.batch, info.shape) == ("input", False, 1, (1, 3, 32, 32))


def test_dynamic_height_and_width(tmp_path):
    x = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, "H", "W"])
    p = save_helper_model(tmp_path / "m.onnx", [x], [helper.make_node("Relu", ["img"], ["y"])], [y])
    info = describe_input(load_onnx(p))
    assert (info.name, info.channels, info.height, info.width, info.dynamic_batch) == (
        "img",
        3,
        None,
        None,
        True,
    )


def _save_external(model_path: Path, dest: Path) -> Path:
    m = onnx.load(str(model_path))
    onnx.save(
        m,
        str(dest),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=dest.name + ".data",
        size_threshold=0,
    )
    assert any(
        uses_external_data(t) for t in onnx.load(str(dest), load_external_data=False).graph.initializer
    )
    return dest


@pytest.mark.parametrize("large", [False, True])
def test_external_data_is_loaded_from_next_to_the_file(model_path, tmp_path, monkeypatch, large):
    (tmp_path / "ext").mkdir()
    ext = _save_external(model_path, tmp_path / "ext" / "model.onnx")
    if large:  # take the > 2 GiB route: checker on the path, shape inference before loading the weights
        monkeypatch.setattr(load_module, "MAX_PROTOBUF_BYTES", 1024)
    monkeypatch.chdir(tmp_path)  # the side file is found next to the model, not in the working directory
    m = load_onnx(ext)
    assert not any(uses_external_data(t) for t in m.graph.initializer)
    assert len(m.graph.value_info) > 0
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(run(m, x), run(onnx.load(str(model_path)), x))


# --- bad files: each message names the problem and what is expected --------------------------------


def test_missing_file(tmp_path):
    msg = bad(tmp_path / "nope.onnx")
    assert msg.startswith(f"ONNX file not found: {tmp_path / 'nope.onnx'}")
    assert "fix: check the path" in msg


def test_directory(tmp_path):
    assert bad(tmp_path).startswith(f"{tmp_path} is a directory, not an ONNX file")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    assert bad(p).startswith(f"{p} is empty (0 bytes), not an ONNX model")


def test_text_file(tmp_path):
    p = tmp_path / "model.onnx"
    p.write_text("input: 1x3x224x224\nthis is a note, not a model\n")
    assert bad(p).startswith(f"{p} is not an ONNX model: it is a text file (starting 'input: 1x3x224x224')")


def test_png_file(tmp_path):
    p = tmp_path / "cat.png"
    Image.new("RGB", (16, 16), (200, 100, 50)).save(p)
    assert bad(p).startswith(f"{p} is not an ONNX model: it is a PNG image")


def test_pytorch_checkpoint(tmp_path):
    p = tmp_path / "model.pt"
    torch.save(TinyNet().state_dict(), p)
    msg = bad(p)
    assert msg.startswith(
        f"{p} is not an ONNX model: it is a zip archive (a PyTorch .pt/.pth checkpoint is one)"
    )
    assert "torch.onnx.export" in msg


def test_truncated_file(model_path, tmp_path):
    data = model_path.read_bytes()
    p = tmp_path / "half.onnx"
    p.write_bytes(data[: len(data) // 2])
    msg = bad(p)
    assert msg.startswith(
        f"{p} looks like an ONNX model but cannot be parsed ({len(data) // 2} bytes): the file is truncated or corrupted"
    )


def test_missing_external_data_file(model_path, tmp_path):
    p = _save_external(model_path, tmp_path / "model.onnx")
    (tmp_path / "model.onnx.data").unlink()
    msg = bad(p)
    assert msg.startswith(
        f"{p} keeps its weights in the external data file 'model.onnx.data', which is not next to it"
    )
    assert "fix: copy 'model.onnx.data' into" in msg


def test_truncated_external_data_file(model_path, tmp_path):
    p = _save_external(model_path, tmp_path / "model.onnx")
    side = tmp_path / "model.onnx.data"
    side.write_bytes(side.read_bytes()[:100])
    msg = bad(p)
    assert msg.startswith(f"the external data file '{side}' of {p} is truncated: tensor '")
    assert "but the file has 100" in msg


def test_no_graph_inputs(tmp_path):
    c = helper.make_node(
        "Constant", [], ["c"], value=numpy_helper.from_array(np.ones((1, 3, 4, 4), np.float32))
    )
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])
    p = save_helper_model(tmp_path / "m.onnx", [], [c, helper.make_node("Relu", ["c"], ["y"])], [y])
    msg = bad(p)
    assert msg.startswith(f"the graph of {p} has no inputs; expected one 4-D image input (N, C, H, W)")


def test_two_dimensional_input(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 784])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    w = numpy_helper.from_array(np.zeros((784, 10), np.float32), "w")
    p = save_helper_model(
        tmp_path / "mlp.onnx", [x], [helper.make_node("MatMul", ["x", "w"], ["y"])], [y], [w]
    )
    msg = bad(p)
    assert msg.startswith(
        f"input 'x' of {p} is 2-D with shape [N, 784]; expected a 4-D image input (N, C, H, W)"
    )


def test_channels_last_input(tmp_path):
    """load_onnx takes an NHWC graph (the layout pass rewrites it to NCHW later); the canonical checks
    (describe_input without channels_last_ok) still refuse one, and a graph without a conv is not a ResNet."""
    from edge_resnet.graph.load import describe_input
    from edge_resnet.graph.prepare import prepare_float_graph

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 224, 224, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 224, 224, 3])
    p = save_helper_model(tmp_path / "m.onnx", [x], [helper.make_node("Relu", ["x"], ["y"])], [y])
    model = load_onnx(p)
    assert describe_input(model, channels_last_ok=True).layout == "NHWC"
    with pytest.raises(GraphError) as exc:
        describe_input(model, source=p)
    assert str(exc.value).startswith(
        f"input 'x' of {p} has shape [N, 224, 224, 3], which looks channels-last (N, H, W, C)"
    )
    with pytest.raises(GraphError, match=r"the graph has no convolution \(its ops: Relu\)"):
        prepare_float_graph(model)


def test_two_image_inputs(tmp_path):
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 8, 8])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    p = save_helper_model(tmp_path / "m.onnx", [a, b], [helper.make_node("Add", ["a", "b"], ["y"])], [y])
    msg = bad(p)
    assert msg.startswith(
        f"the graph of {p} has 2 inputs ('a' [1, 3, 8, 8], 'b' [1, 3, 8, 8]); expected exactly one"
    )


def test_old_opset(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    p = save_helper_model(tmp_path / "m.onnx", [x], [helper.make_node("Relu", ["x"], ["y"])], [y], opset=9)
    msg = bad(p)
    assert msg.startswith(f"{p} uses ONNX opset 9; edge-resnet needs opset 11 or newer")
    assert "onnx.version_converter.convert_version" in msg


def test_invalid_graph(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    p = save_helper_model(tmp_path / "m.onnx", [x], [helper.make_node("Add", ["x", "missing"], ["y"])], [y])
    msg = bad(p)
    assert msg.startswith(f"{p} is not a valid ONNX model: ")
    assert "missing" in msg


# --- save_onnx ---------------------------------------------------------------------------------------


def test_save_writes_one_self_contained_file(model_path, tmp_path):
    m = load_onnx(_save_external(model_path, tmp_path / "ext.onnx"))  # weights came from a side file
    out = tmp_path / "out" / "model.onnx"
    assert save_onnx(m, out) == out
    assert sorted(os.listdir(out.parent)) == ["model.onnx"]  # no side file, no temp file left
    reread = onnx.load(str(out), load_external_data=False)
    assert not any(uses_external_data(t) for t in reread.graph.initializer)
    assert reread.SerializeToString() == m.SerializeToString()
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of a temp file


def test_save_replaces_atomically(model_path, tmp_path, monkeypatch):
    m = load_onnx(model_path)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous good model")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(load_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_onnx(m, out)
    assert out.read_bytes() == b"previous good model"
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "tiny.onnx"]  # the temp file was removed
    monkeypatch.undo()
    save_onnx(m, out)
    assert onnx.load(str(out)).SerializeToString() == m.SerializeToString()


def test_save_refuses_unloaded_external_data(model_path, tmp_path):
    m = onnx.load(str(_save_external(model_path, tmp_path / "ext.onnx")), load_external_data=False)
    with pytest.raises(GraphError) as exc:
        save_onnx(m, tmp_path / "out.onnx")
    assert "still point to external data that is not loaded into the model" in str(exc.value)
    assert not (tmp_path / "out.onnx").exists()


def test_save_refuses_more_than_2gib(model_path, tmp_path, monkeypatch):
    monkeypatch.setattr(load_module, "MAX_PROTOBUF_BYTES", 100)
    with pytest.raises(GraphError) as exc:
        save_onnx(load_onnx(model_path), tmp_path / "out.onnx")
    assert "a single ONNX file is limited to 2 GiB" in str(exc.value)
    assert "save_as_external_data=True" in str(exc.value)


def test_stale_intermediate_shapes_are_ignored(tmp_path, caplog):
    """Some exporters store value_info that disagrees with the graph; it is only a hint."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Relu", ["r"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [x],
        [y],
        value_info=[
            helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 5, 8, 8])  # wrong: r is [1, 3, 8, 8]
        ],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(m, str(tmp_path / "m.onnx"))
    loaded = load_onnx(tmp_path / "m.onnx")
    r = next(vi for vi in loaded.graph.value_info if vi.name == "r")
    assert [d.dim_value for d in r.type.tensor_type.shape.dim] == [1, 3, 8, 8]
    assert "disagree with the graph" in caplog.text


def test_inconsistent_graph_fails_shape_inference(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 7, 6, 6])  # the Conv gives 4 channels
    w = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    p = save_helper_model(tmp_path / "m.onnx", [x], [helper.make_node("Conv", ["x", "w"], ["y"])], [y], [w])
    msg = bad(p)
    assert msg.startswith(f"shape inference failed on {p}: ")
    assert "Inferred shape and existing shape differ in dimension 1: (4) vs (7)" in msg


def test_save_to_a_directory(model_path, tmp_path):
    with pytest.raises(GraphError, match="it is a directory"):
        save_onnx(load_onnx(model_path), tmp_path)
