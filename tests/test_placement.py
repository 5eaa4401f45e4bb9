"""`tst eval` / `tst sample` --device and --dtype, and loading a model straight into its device and dtype: the
same weights as a plain load, the same numbers on the CPU in fp32, bf16 within its own precision."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import MOBY, run_cli
from test_cli_errors import assert_one_line_error
from tstcli.run import placement
from tstcli.run.load import load_model
from tstcli.run.safetensors_stream import read_tensors

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")


@NO_GPU
def test_cuda_without_a_gpu_is_a_one_line_usage_error(finished_run):
    for verb in (("eval",), ("sample", "--max-new-tokens", "2")):
        assert_one_line_error(run_cli(*verb, finished_run, "--device", "cuda"), 2, "--device cuda", "GPU")
    assert_one_line_error(run_cli("eval", finished_run, "--dtype", "fp16"), 2, "--dtype")


@NO_GPU
def test_auto_is_the_cpu_in_fp32_here():
    assert placement.resolve() == placement.CPU_FP32
    assert placement.resolve("cpu", "bf16") == placement.Placement(torch.device("cpu"), torch.bfloat16)


def test_eval_json_records_device_and_dtype_and_bf16_stays_within_its_precision(finished_run):
    out = {}
    for dtype in ("fp32", "bf16"):
        r = run_cli("eval", finished_run, "--device", "cpu", "--dtype", dtype, "--json")
        assert r.returncode == 0, r.stderr
        out[dtype] = json.loads(r.stdout)
        assert (out[dtype]["device"], out[dtype]["dtype"]) == ("cpu", dtype)
    auto = json.loads(run_cli("eval", finished_run, "--json").stdout)
    if not torch.cuda.is_available():  # auto on the CPU is today's fp32 evaluation, number for number
        assert auto["heldout"] == out["fp32"]["heldout"]
    fp32, bf16 = out["fp32"]["heldout"]["val_loss"], out["bf16"]["heldout"]["val_loss"]
    assert fp32 != bf16 and abs(fp32 - bf16) <= 8 * 2 ** -8 * fp32  # a few bf16 roundings, not a different model


def test_sample_json_records_device_and_dtype(finished_export):
    r = run_cli("sample", finished_export, "--max-new-tokens", "3", "--dtype", "bf16", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert (res["device"], res["dtype"]) == ("cpu", "bf16") and len(res["samples"][0]["token_ids"]) <= 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_export_loads_into_its_target_dtype_with_the_files_weights(finished_export, dtype):
    lm = load_model(finished_export, placement=placement.Placement(torch.device("cpu"), dtype))
    files = load_file(str(finished_export / "model.safetensors"))
    assert all(p.dtype == dtype for p in lm.model.parameters())
    assert torch.equal(lm.model.tok_embeddings.weight, files["model.embed_tokens.weight"].to(dtype))
    assert torch.equal(lm.model.layers[1].attention.wk.weight,
                       files["model.layers.1.self_attn.k_proj.weight"].to(dtype))
    assert lm.model.rope_cos.dtype == torch.float32 and lm.model.rope_cos.device.type == "cpu"


def test_a_run_loads_into_bf16_with_its_checkpoints_weights_rounded(finished_run):
    fp32 = load_model(finished_run).model.state_dict()
    bf16 = load_model(finished_run, placement=placement.Placement(torch.device("cpu"), torch.bfloat16)).model
    assert all(torch.equal(t, fp32[n].to(torch.bfloat16)) for n, t in bf16.state_dict().items()
               if t.is_floating_point() and not n.startswith("rope"))


def test_the_streaming_reader_reads_what_safetensors_reads_and_refuses_a_truncated_file(finished_export, tmp_path):
    path = finished_export / "model.safetensors"
    ours, theirs = dict(read_tensors(path)), load_file(str(path))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="truncated"):
        list(read_tensors(cut))
    cut.write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="header"):
        list(read_tensors(cut))


def test_a_truncated_export_is_one_line_exit_4(finished_export_copy):
    f = finished_export_copy / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    (finished_export_copy / "tst_export.json").unlink()  # past the checksum: the reader itself must notice
    assert_one_line_error(run_cli("eval", finished_export_copy, "--corpus", MOBY), 4, "cannot load weights",
                          "truncated")
