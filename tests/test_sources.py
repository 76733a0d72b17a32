"""Models from outside this project (store/sources.py, nets/library.py, nets/discover.py): built
by name, with weights and a declared input; MLflow pytorch-flavor models (pt2 unflattened, pickle
only with MLflow's permission); their layers found by running them; analysed through `mlflow run`
beside each other."""

import json

import mlflow
import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn
from torchvision.transforms.v2 import functional as TF

from analysis.data import load_dataset
from analysis.nets.forward import tapped
from analysis.nets.library import InputSpec, parse_source, prepare_inputs
from analysis.store import contract as c
from analysis.store.sources import PICKLE_ENV, load_source
from tests.conftest import mlflow_cli
from tests.test_cka import reference_minibatch_cka

RESNET = "torchvision:resnet18?num_classes=10&input_size=32"
VIT = ("python:torchvision.models.vision_transformer:VisionTransformer?image_size=32&patch_size=8&num_layers=2"
       "&num_heads=2&hidden_dim=32&mlp_dim=64&num_classes=10&mean=0.5&std=0.5")


class TinyNet(nn.Module):
    """A reused in-place ReLU, an Identity, a Dropout and a defined-but-unused layer."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.skip, self.drop = nn.Identity(), nn.Dropout(0.5)
        self.unused = nn.Linear(3, 3)
        self.head = nn.Linear(4, 10)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(self.skip(x))))
        return self.head(self.drop(x.mean((2, 3))))


def outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    seen: list = [None] * len(names)
    with torch.no_grad(), tapped(model, names, lambda i, out: seen.__setitem__(i, out.clone())):
        model(x)
    return seen


def test_the_layers_are_what_runs_and_each_call_of_a_reused_module_is_its_own_layer():
    from analysis.nets.discover import run_layers

    torch.manual_seed(0)
    net = TinyNet().eval()
    layers = run_layers(net, torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    # the unused Linear never runs; Identity and Dropout hand on their input; the ReLU runs twice
    assert layers.select("all") == ["conv1", "bn1", "relu@1", "conv2", "bn2", "relu@2", "head"]
    with pytest.raises(ValueError, match=r"'relu' runs 2 times in one forward pass: name each call \(relu@1 \.\.\. relu@2\)"):
        layers.select("relu")
    assert layers.select("conv*,relu@2") == ["conv1", "conv2", "relu@2"]
    with pytest.raises(ValueError, match="no repeated blocks"):
        layers.select("blocks")

    x = torch.randn(3, 3, 8, 8)
    first, second, bn1 = outputs(net, ["relu@1", "relu@2", "bn1"], x)
    with torch.no_grad():
        expected_bn1 = net.bn1(net.conv1(x))
        assert torch.equal(bn1, expected_bn1) and (bn1 < 0).any()  # the in-place ReLU did not overwrite it
        assert torch.equal(first, torch.relu(expected_bn1))
        assert torch.equal(second, torch.relu(net.bn2(net.conv2(torch.relu(expected_bn1)))))
    with pytest.raises(ValueError, match=r"layer 'relu' ran 2 times .* name each call \(relu@1, relu@2"):
        outputs(net, ["relu"], x)


def test_torchvision_networks_are_found_by_name_with_their_blocks_and_declared_input():
    resnet = load_source(RESNET)
    assert resnet.label == "torchvision.resnet18" and resnet.num_classes == 10
    assert resnet.layer_names("blocks") == [f"layer{s}.{b}" for s in (1, 2, 3, 4) for b in (0, 1)]
    names = resnet.layer_names()
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"] and names[-2:] == ["avgpool", "fc"]
    assert "layer1.0.relu@1" in names and "layer1.0.relu@2" in names
    # size from the params, normalisation from torchvision's weights record (random weights still)
    assert resnet.params["input_size"] == "32" and resnet.params["mean"] == "0.485/0.456/0.406"
    assert "params" in resnet.params["input_declared_by"] and "ResNet18_Weights" in resnet.params["input_declared_by"]

    vit = load_source(VIT)
    assert vit.layer_names("blocks") == ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    assert "encoder.layers.encoder_layer_0.self_attention" in vit.layer_names()  # a tuple output, and its
    assert not any("out_proj" in n for n in vit.layer_names())  # out_proj is held but never called
    assert vit.params["mean"] == "0.5/0.5/0.5" and "builder's arguments" in vit.params["input_declared_by"]


def test_a_timm_network_declares_its_normalisation_through_its_pretrained_config():
    pytest.importorskip("timm")
    vit = load_source("timm:vit_tiny_patch16_224?img_size=32&patch_size=8&depth=2&num_classes=10")
    assert vit.layer_names("blocks") == ["blocks.0", "blocks.1"]
    assert vit.params["mean"] == "0.5/0.5/0.5" and "timm's pretrained_cfg" in vit.params["input_declared_by"]


def test_a_network_that_declares_no_input_is_refused_naming_the_keys():
    with pytest.raises(ValueError, match=r"declares no input_size or mean or std; add them"):
        load_source("python:torchvision.models:resnet18")
    for bad, message in (("torchvision:resnet18?std=0", "std='0' must be one number or three"),
                         ("torchvision:resnet18?input_size=-3", "input_size='-3' must be an integer >= 1"),
                         ("torchvision:nosuchnet", "cannot be built"),
                         ("keras:resnet", "is not a registry URI or a source this tool reads"),
                         ("python:nosuchmodule:build?input_size=8&mean=0&std=1", "cannot import nosuchmodule")):
        with pytest.raises(ValueError, match=message):
            load_source(bad)


def test_the_input_is_prepared_as_the_library_prepares_it():
    """Resize the shorter side to size / crop_pct, centre-crop, normalise: against torchvision's own transforms."""
    spec = InputSpec(size=24, crop_pct=0.75, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), origin="test")
    x = torch.rand(2, 3, 40, 48)
    prepared = prepare_inputs(nn.Identity(), spec)(x)
    expected = TF.normalize(TF.center_crop(TF.resize(x, [32], antialias=True), [24]), list(spec.mean), list(spec.std))
    assert prepared.shape == (2, 3, 24, 24)
    torch.testing.assert_close(prepared, expected, atol=1e-5, rtol=0)


def test_weights_come_from_a_safetensors_file_and_a_mismatch_is_refused(tmp_path):
    torch.manual_seed(1)
    trained = torchvision.models.resnet18(num_classes=10).eval()
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = load_source(f"{RESNET}&weights={tmp_path / 'w.safetensors'}")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = trained(TF.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
        torch.testing.assert_close(loaded.model(x), expected)
    with pytest.raises(ValueError, match=r"w.safetensors does not fit this network"):
        load_source(f"torchvision:resnet18?num_classes=7&input_size=32&weights={tmp_path / 'w.safetensors'}")
    with pytest.raises(ValueError, match="init_seed='x' must be an integer >= 0"):
        load_source(f"{RESNET}&init_seed=x")
    with torch.no_grad():  # random weights are drawn from init_seed: the same twice, another for another seed
        again, other = load_source(RESNET).model(x), load_source(f"{RESNET}&init_seed=1").model(x)
        torch.testing.assert_close(load_source(RESNET).model(x), again)
        assert not torch.allclose(again, other)
    with pytest.raises(ValueError, match="is not a file"):
        load_source(f"{RESNET}&weights={tmp_path / 'none.safetensors'}")


def log_tiny(name: str, serialization_format: str) -> TinyNet:
    torch.manual_seed(2)
    net = TinyNet().eval()
    with mlflow.start_run():
        mlflow.pytorch.log_model(net, name=name, input_example=np.random.rand(4, 3, 8, 8).astype(np.float32),
                                 registered_model_name=name, serialization_format=serialization_format,
                                 pip_requirements=["torch"])
    return net


def test_a_pt2_model_is_unflattened_and_every_layer_is_captured(store):
    net = log_tiny("tiny-pt2", "pt2")
    loaded = load_source("models:/tiny-pt2/1?mean=0&std=1")
    assert loaded.label == "tiny-pt2-v1" and loaded.params["input_size"] == "8"  # the size it was exported at
    names = loaded.layer_names()
    assert names == ["conv1", "bn1", "relu@1", "conv2", "bn2", "relu@2", "head"]
    x = torch.rand(5, 3, 8, 8)  # another batch size than the example's: the batch stays dynamic
    for got, want in zip(outputs(loaded.model, names, x), outputs(net, names, x)):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="exported for 8x8 images"):
        load_source("models:/tiny-pt2/1?mean=0&std=1&input_size=16")


def test_a_pickle_model_loads_only_where_mlflow_allows_pickle(store, monkeypatch):
    net = log_tiny("tiny-pickle", "pickle")
    monkeypatch.setenv(PICKLE_ENV, "false")
    with pytest.raises(ValueError, match=rf"pickle format.*{PICKLE_ENV}=false.*set {PICKLE_ENV}=true"):
        load_source("models:/tiny-pickle/1?input_size=8&mean=0&std=1")
    monkeypatch.setenv(PICKLE_ENV, "true")
    loaded = load_source("models:/tiny-pickle/1?input_size=8&mean=0&std=1")
    x = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(outputs(loaded.model, ["relu@2"], x)[0], outputs(net, ["relu@2"], x)[0])


def test_layers_list_prints_every_set_of_an_outside_model(capsys):
    from entrypoints import analyze

    analyze.main(analyze.parse_args(["--models", RESNET, "--layers", "list"]))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{RESNET}: layers=all (60): conv1, bn1, relu, maxpool, layer1.0.conv1")
    assert lines[1] == f"{RESNET}: layers=blocks (8): " + ", ".join(f"layer{s}.{b}" for s in (1, 2, 3, 4) for b in (0, 1))
    assert lines[2].startswith(f"{RESNET}: every layer that runs, what patterns match (75): ")
    assert lines[3] == (f"{RESNET}: functional operations, tapped when a pattern names them (9): flatten, "
                        + ", ".join(f"layer{s}.{b}.add" for s in (1, 2, 3, 4) for b in (0, 1)))


@pytest.mark.parametrize("source,wanted", [
    (RESNET, ["layer1.0.add", "layer4.1.add", "flatten"]),  # the residual sums before their in-place ReLU
    (VIT, ["encoder.layers.encoder_layer_1.add_1", "getitem_5"]),  # a block's second residual sum; the class token
])
def test_functional_operations_are_layers_as_torchvisions_feature_extraction_reads_them(source, wanted):
    """Tapped by name, each equals what torchvision's create_feature_extractor returns for the node
    of that name; the network's logits, its blocks and `all` are what they were."""
    import copy

    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    loaded = load_source(source)
    untouched = copy.deepcopy(loaded.model)  # its forward as built: the extractor reads it (without the input pre-hook)
    for module in untouched.modules():  # else the extractor hands back the sum as the in-place ReLU after it left it
        if isinstance(module, nn.ReLU):
            module.inplace = False
    blocks, every = loaded.layer_names("blocks"), loaded.layer_names("all")
    assert set(loaded.layers.functional(loaded.model)) <= set(get_graph_node_names(untouched)[1])  # the same names
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        before = loaded.model(x)
        names = loaded.layer_names(",".join(wanted))
        assert sorted(names) == sorted(wanted)
        got = dict(zip(names, outputs(loaded.model, names, x)))
        spec = loaded.params
        prepared = TF.normalize(x, [float(v) for v in spec["mean"].split("/")], [float(v) for v in spec["std"].split("/")])
        expected = create_feature_extractor(untouched, wanted)(prepared)
        torch.testing.assert_close(loaded.model(x), before)
    for name in wanted:
        torch.testing.assert_close(got[name], expected[name])
    assert loaded.layer_names("blocks") == blocks and loaded.layer_names("all") == every


def test_source_strings_keep_their_keys_apart_from_the_builder_arguments():
    source = parse_source("timm:vit_small?img_size=32&weights=runs:/abc/w.safetensors&drop_rate=0.1&global_pool=avg")
    assert source.keys == {"weights": "runs:/abc/w.safetensors"}
    assert source.kwargs == {"img_size": 32, "drop_rate": 0.1, "global_pool": "avg"}
    with pytest.raises(ValueError, match="'depth' is not a key of a models:/ source"):
        parse_source("models:/a/1?depth=3")


@pytest.mark.slow
def test_a_torchvision_resnet_and_a_vit_analysed_together_through_mlflow_run(store, tiny_data):
    proc = mlflow_cli("-e", "analyze", "-P", f"models={RESNET},{VIT}", "-P", "dataset=cifar10", "-P", "layers=blocks",
                      "-P", "analyses=cka,pc", "-P", "num_examples=0", "-P", "batch_size=100", "-P", "passes=1",
                      "-P", "pc_iterations=2", "-P", "device=cpu", cwd=store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {r.data.tags.get(c.ANALYSIS_MODEL_URI): r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    resnet_run, vit_run = runs[RESNET], runs[VIT]
    assert resnet_run.info.run_name == "analyze-torchvision.resnet18"
    assert resnet_run.data.params["input_size"] == "32" and vit_run.data.params["std"] == "0.5/0.5/0.5"
    assert c.BLOCK_COUNT in vit_run.data.metrics and c.ANALYSIS_ACCURACY in resnet_run.data.metrics

    parent = mlflow.get_run(resnet_run.data.tags["mlflow.parentRunId"])
    cross_dir = c.cross_dir("torchvision.resnet18", "python.VisionTransformer")
    cross = np.load(mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path=f"{cross_dir}/{c.MATRIX}.npy"))
    assert cross.shape == (8, 2)

    # Against a float64 reference: one batch of all 100 test images, each network built again from
    # its seed (0) with plain torch, fed its declared input prepared by torchvision's transforms.
    data = load_dataset("cifar10", str(tiny_data))
    x = data.test_x.float() / 255
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                               mlp_dim=64, num_classes=10).eval()
    seen = {}
    resnet.layer4[1].register_forward_hook(lambda _m, _i, out: seen.__setitem__("resnet", out))
    vit.encoder.layers[1].register_forward_hook(lambda _m, _i, out: seen.__setitem__("vit", out))
    with torch.no_grad():
        resnet(TF.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
        vit(TF.normalize(x, [0.5] * 3, [0.5] * 3))
    expected = reference_minibatch_cka([seen["resnet"].double().numpy()], [seen["vit"].double().numpy()])
    assert cross[-1, -1] == pytest.approx(expected, abs=1e-4)
    summary = json.loads(open(mlflow.artifacts.download_artifacts(run_id=vit_run.info.run_id,
                                                                 artifact_path=f"{c.CKA_DIR}/summary.json")).read())
    assert summary["layer_names"] == ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
