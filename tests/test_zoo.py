"""The zoo of named teachers: the registry's integrity, the downloader against a local HTTP server on 127.0.0.1
(success, atomic write, sha256, a mismatch, an HTML body, a cut body, Google Drive's confirmation page, the
mirrors, the cache used with the server stopped, offline, an unwritable cache), and `zoo:NAME` on every entry
script: the architecture it sets, the conflicts, names of another dataset, presets, the defaults' hint."""
import contextlib
import http.server
import io
import json
import os
import threading
import urllib.parse

import pytest
import torch
import torch.nn as nn

from data import dataset_info
from evaluation.cli import build_parser as evaluation_parser, check_settings, resolve as resolve_evaluation
from helpers import CIFAR_DEFAULTS, run_script
from models import build_model
from pipeline.plan import Plan, training_switches
from pipeline.presets import load_preset
from runtime.errors import UserError
from teachers import download, zoo
from training.config import build_parser, resolve
from training.networks import Trainee, load_teacher_and_file, require_teacher_file, teacher_missing_message
from training.run_dir import identity_differences

import main_eval

PAPER_TEACHERS = {("Chen2021LTD_WRN34_10", "CIFAR10"), ("Chen2021LTD_WRN34_10", "CIFAR100"),
                  ("Chen2021LTD_WRN34_20", "CIFAR10"), ("Zhang2019Theoretically", "CIFAR10")}


# -- the registry ------------------------------------------------------------------------------------------------

def test_the_registry_holds_the_papers_teachers_and_every_entry_is_sound():
    entries = zoo.load_registry(zoo.DEFAULT_REGISTRY)
    assert PAPER_TEACHERS <= {(e.name, e.dataset) for e in entries}
    assert len({(e.name, e.dataset) for e in entries}) == len(entries) >= 40
    for e in entries:
        with torch.device("meta"):  # the architecture builds (WRN-70-16 too) without allocating its weights
            model = build_model(e.architecture, dataset_info(e.dataset).num_classes)
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        assert head.out_features == dataset_info(e.dataset).num_classes, e
        assert all(u.startswith(("https://", "http://")) for u in e.urls) and e.urls, e
        assert e.sha256 is None or (len(e.sha256) == 64 and int(e.sha256, 16) >= 0), e
        assert e.threat == "Linf" and e.training in ("adversarial", "natural"), e
        for number in (e.clean_acc, e.autoattack_acc):
            assert number is None or 0 <= number <= 100, e
        if e.clean_acc is not None:
            assert e.accuracy_source.startswith("https://github.com/RobustBench/robustbench/blob/"), e
        assert any(u.startswith("https://drive.google.com/uc?export=download&id=") for u in e.urls), e
    trades = zoo.entry("Zhang2019Theoretically", "CIFAR10")
    assert (trades.architecture, trades.clean_acc, trades.autoattack_acc) == ("wideresnet34_10", 84.92, 53.08)
    assert "10sHvaXhTNZGz618QmD5gSOAjO3rMzV33" in trades.urls[0]  # the TRADES authors' own link first


@pytest.mark.parametrize("change, message", [
    ({"urls": ["ftp://x/y.pt"]}, "urls must be a non-empty list of http"),
    ({"urls": []}, "urls must be a non-empty list"),
    ({"sha256": "ABC"}, "sha256 must be 64 lowercase hex digits"),
    ({"clean_acc": 101}, "clean_acc must be a percentage in \\[0, 100\\]"),
    ({"accuracy_source": None}, "accuracies need an accuracy_source"),
    ({"dataset": "ImageNet"}, "dataset \"ImageNet\" is not one of"),
    ({"colour": "red"}, "unknown keys colour"),
    ({"name": "a b"}, "name must be a plain name"),
    ({"threat": "L2"}, "threat \"L2\" is not one of Linf"),
])
def test_a_bad_registry_entry_is_one_line_naming_the_field(change, message):
    raw = json.load(open(zoo.DEFAULT_REGISTRY))["teachers"][0]
    with pytest.raises(UserError, match=message):
        zoo.check_entry(dict(raw, **change), "zoo.json teachers[0]")


# -- a local server and a test registry --------------------------------------------------------------------------

def checkpoint_bytes(architecture="wideresnet10_1", classes=10) -> bytes:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save({"net": build_model(architecture, classes).state_dict()}, buffer)
    return buffer.getvalue()


class Server:
    """A local HTTP server whose routes (path with query -> (status, headers, body, bytes actually sent)) the
    test sets; it records every request's path."""

    def __init__(self):
        self.routes, self.requests = {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                status, headers, body, sent = server.routes.get(self.path, (404, {}, b"not found", None))
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body[:sent] if sent is not None else body)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}{path}"

    def serve(self, path, body, content_type="application/octet-stream", status=200, sent=None):
        self.routes[path] = (status, {"Content-Type": content_type}, body, sent)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    with contextlib.suppress(Exception):
        s.stop()


def entry_json(name, urls, sha256=None, dataset="CIFAR10", architecture="wideresnet10_1", training="adversarial"):
    return {"name": name, "dataset": dataset, "threat": "Linf", "architecture": architecture, "training": training,
            "clean_acc": None, "autoattack_acc": None, "eps": None, "accuracy_source": None, "paper": None,
            "urls": urls, "sha256": sha256}


@pytest.fixture
def registry(tmp_path, monkeypatch):
    """Write a test registry (ADVKD_ZOO, the testing and mirroring hook) and a cache (ADVKD_CACHE) in tmp_path."""
    cache = tmp_path / "cache"
    monkeypatch.setenv(zoo.CACHE_ENV, str(cache))

    def write(*entries):
        path = tmp_path / f"zoo{len(list(tmp_path.glob('zoo*.json')))}.json"
        path.write_text(json.dumps({"teachers": list(entries)}))
        monkeypatch.setenv(zoo.REGISTRY_ENV, str(path))
        return {e["name"]: zoo.entry(e["name"], e["dataset"]) for e in entries}
    return write


def leftovers(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith(".") or name.endswith(".part"))


# -- the downloader ----------------------------------------------------------------------------------------------

def test_a_download_lands_atomically_with_its_sha256_printed_and_a_second_call_uses_the_cache_offline(
        server, registry, capsys, monkeypatch):
    body = checkpoint_bytes()
    server.serve("/t.pt", body)
    e = registry(entry_json("T", [server.url("/t.pt")]))["T"]
    with pytest.raises(UserError, match=r"not in the cache yet .*add --download .*place the file at .*T\.pt"):
        download.ensure(e, download=False)
    assert server.requests == []  # nothing is downloaded unless asked
    path = download.ensure(e, download=True)
    assert path == zoo.cached_path(e) and open(path, "rb").read() == body
    assert leftovers(os.path.dirname(path)) == []  # the temporary file was renamed into place
    assert download.sha256_of(path) in capsys.readouterr().err  # no sha256 in the registry: it is printed
    server.stop()

    def no_network(*args, **kwargs):
        raise AssertionError("the cache must be used without opening a connection")
    monkeypatch.setattr(download.urllib.request, "build_opener", no_network)
    assert download.ensure(e, download=True) == path


def test_a_known_sha256_is_checked_and_a_mismatch_is_kept_aside_never_used(server, registry):
    body = checkpoint_bytes()
    server.serve("/t.pt", body)
    good = download.hashlib.sha256(body).hexdigest()
    e = registry(entry_json("Good", [server.url("/t.pt")], sha256=good),
                 entry_json("Bad", [server.url("/t.pt")], sha256="0" * 64))
    assert download.ensure(e["Good"], download=True) == zoo.cached_path(e["Good"])
    with pytest.raises(UserError) as info:
        download.ensure(e["Bad"], download=True)
    message = str(info.value)
    assert good in message and "0" * 64 in message and server.url("/t.pt") in message and "\n" not in message
    path = zoo.cached_path(e["Bad"])
    assert not os.path.exists(path) and os.path.isfile(path + download.MISMATCH_SUFFIX)
    # A file placed by hand in the cache is checked too, and moved aside when it differs.
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 someone else's file")
    with pytest.raises(UserError, match="not the registry's 0{64}; it was moved aside"):
        download.ensure(e["Bad"], download=False)
    assert not os.path.exists(path)


@pytest.mark.parametrize("body, content_type, said", [
    (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>Too many users</body>"
     b"</html>", "text/html; charset=utf-8", "an HTML page \\('Google Drive - Quota exceeded'\\)"),
    (b"<html><title>Sign in</title></html>", "application/octet-stream", "an HTML page \\('Sign in'\\)"),
    (b'{"error": "gone"}', "application/json", "a JSON document"),
    (b"\x00\x01 not a checkpoint", "application/octet-stream", "not a torch checkpoint"),
])
def test_a_body_that_is_not_a_checkpoint_is_named_with_the_url_and_the_manual_fallback(server, registry, body,
                                                                                        content_type, said):
    server.serve("/t.pt", body, content_type)
    e = registry(entry_json("T", [server.url("/t.pt")]))["T"]
    with pytest.raises(UserError, match=said) as info:
        download.ensure(e, download=True)
    assert server.url("/t.pt") in str(info.value) and f"place the file at {zoo.cached_path(e)}" in str(info.value)
    folder = os.path.dirname(zoo.cached_path(e))
    assert os.listdir(folder) == []  # nothing half-written, nothing that looks complete


@pytest.mark.parametrize("sent_fraction, length_matches, said", [
    (0.5, False, "the body was cut short \\(\\d+ of \\d+ bytes\\)"),
    (0.5, True, "its zip container has no end record"),
])
def test_a_truncated_body_is_refused_and_leaves_nothing(server, registry, sent_fraction, length_matches, said):
    body = checkpoint_bytes()
    cut = body[:int(len(body) * sent_fraction)]
    if length_matches:  # a server that says the cut length: the zip container itself shows the cut
        server.serve("/t.pt", cut)
    else:
        server.serve("/t.pt", body, sent=len(cut))
    e = registry(entry_json("T", [server.url("/t.pt")]))["T"]
    with pytest.raises(UserError, match=said):
        download.ensure(e, download=True)
    assert os.listdir(os.path.dirname(zoo.cached_path(e))) == []


def test_google_drives_confirmation_page_is_followed(server, registry):
    body = checkpoint_bytes()
    page = (b'<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>'
            b'<form id="download-form" action="/download" method="get">'
            b'<input type="submit" id="uc-download-link" value="Download anyway"/>'
            b'<input type="hidden" name="id" value="ABC"><input type="hidden" name="export" value="download">'
            b'<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="u-1"></form>'
            b'</body></html>')
    server.serve("/uc?export=download&id=ABC", page, "text/html; charset=utf-8")
    server.serve("/download?id=ABC&export=download&confirm=t&uuid=u-1", body)
    e = registry(entry_json("T", [server.url("/uc?export=download&id=ABC")]))["T"]
    assert open(download.ensure(e, download=True), "rb").read() == body
    assert server.requests == ["/uc?export=download&id=ABC", "/download?id=ABC&export=download&confirm=t&uuid=u-1"]


def test_the_older_confirm_token_page_is_followed_too():
    page = b'<html><a id="uc-download-link" href="/uc?export=download&amp;confirm=Xy_1&amp;id=ABC">Download</a></html>'
    assert download.confirmation_url(page, "https://drive.google.com/uc?export=download&id=ABC") == \
        "https://drive.google.com/uc?export=download&confirm=Xy_1&id=ABC"
    bare = b"<html><script>var u = '...confirm=Q9z&id=ABC';</script></html>"
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(
        download.confirmation_url(bare, "https://drive.google.com/uc?export=download&id=ABC")).query)
    assert query == {"export": ["download"], "id": ["ABC"], "confirm": ["Q9z"]}


def test_every_mirror_is_tried_in_order(server, registry):
    body = checkpoint_bytes()
    server.serve("/second.pt", body)
    e = registry(entry_json("T", [server.url("/first.pt"), server.url("/second.pt")]))["T"]
    assert open(download.ensure(e, download=True), "rb").read() == body
    assert server.requests == ["/first.pt", "/second.pt"]


def test_offline_is_one_line_naming_each_url_and_where_to_place_the_file(server, registry):
    urls = [server.url("/a.pt"), server.url("/b.pt")]
    server.stop()  # connection refused
    e = registry(entry_json("T", urls))["T"]
    with pytest.raises(UserError) as info:
        download.ensure(e, download=True)
    message = str(info.value)
    assert all(f"{u}: " in message for u in urls) and "refused" in message.lower() and "\n" not in message
    assert f"place the file at {zoo.cached_path(e)}" in message


def test_a_cache_that_cannot_be_written_is_one_line(tmp_path, registry, monkeypatch):
    e = registry(entry_json("T", ["http://127.0.0.1:9/t.pt"]))["T"]
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(zoo.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(UserError, match=f"the teacher cache .* cannot be made .*set {zoo.CACHE_ENV} to a writable"):
        download.ensure(e, download=True)


def test_processes_fetching_one_teacher_at_once_download_it_once(server, registry):
    body = checkpoint_bytes()
    server.serve("/t.pt", body)
    e = registry(entry_json("T", [server.url("/t.pt")]))["T"]
    results = []
    threads = [threading.Thread(target=lambda: results.append(download.ensure(e, download=True))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [zoo.cached_path(e)] * 3 and server.requests == ["/t.pt"]


# -- names ------------------------------------------------------------------------------------------------------

def parse_training(*flags, defaults=CIFAR_DEFAULTS):
    return resolve(build_parser(defaults, "test").parse_args(["--save_dir", "x", *flags]))


def test_zoo_name_sets_the_teachers_architecture_path_and_source(monkeypatch, tmp_path):
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path))
    config = parse_training("--method", "DGAD", "--teacher_path", "zoo:Chen2021LTD_WRN34_20")
    assert (config.teacher_model, config.teacher_source) == ("wideresnet34_20", "zoo:Chen2021LTD_WRN34_20")
    assert config.teacher_path == str(tmp_path / "CIFAR10" / "Chen2021LTD_WRN34_20.pt")
    same = parse_training("--method", "DGAD", "--teacher_path", "zoo:Chen2021LTD_WRN34_20", "--teacher_model",
                          "wideresnet34_20")
    assert same.teacher_model == "wideresnet34_20"
    hundred = parse_training("--dataset", "CIFAR100", "--method", "AdaAD", "--teacher_path", "zoo:Chen2021LTD_WRN34_10")
    assert hundred.teacher_path == str(tmp_path / "CIFAR100" / "Chen2021LTD_WRN34_10.pt")
    akd = parse_training("--method", "AKD", "--teacher_path", "zoo:Zhang2019Theoretically", "--teacher_st_path",
                         "zoo:Standard")
    assert (akd.teacher_st_model, akd.teacher_st_source) == ("wideresnet28_10", "zoo:Standard")
    assert parse_training("--method", "DGAD").teacher_model == "wideresnet34_10"  # the default, unchanged


@pytest.mark.parametrize("flags, message", [
    (("--teacher_path", "zoo:Chen2021LTD_WRN34_20", "--teacher_model", "wideresnet34_10"),
     "--teacher_model wideresnet34_10 conflicts with --teacher_path zoo:Chen2021LTD_WRN34_20, which is a "
     "wideresnet34_20: leave --teacher_model out"),
    (("--teacher_path", "zoo:chen2021ltd_wrn34_1"), "no such teacher in the zoo; did you mean zoo:Chen2021LTD_WRN34_10"),
    (("--teacher_path", "zoo:Nobody"), "zoo:Nobody: no such teacher in the zoo \\(docs/teachers.md"),
    (("--teacher_path", "zoo:"), "names no teacher"),
    (("--dataset", "CIFAR100", "--teacher_path", "zoo:Chen2021LTD_WRN34_20"),
     "zoo:Chen2021LTD_WRN34_20 is a teacher for CIFAR10, not --dataset CIFAR100"),
    (("--teacher_path", "robustbench:Carmon2019Unlabeled", "--teacher_model", "wideresnet28_10"),
     "--teacher_model wideresnet28_10 conflicts with --teacher_path robustbench:Carmon2019Unlabeled"),
    (("--teacher_path", "robustbench:"), "robustbench: names no model"),
])
def test_bad_teacher_names_are_one_line(flags, message):
    with pytest.raises(UserError, match=message):
        parse_training("--method", "DGAD", *flags)


def test_a_zoo_name_of_another_threat_model_is_one_line():
    with pytest.raises(UserError, match="zoo:Zhang2019Theoretically is robust under Linf, and these runs train and "
                                        "evaluate L2"):
        zoo.entry("Zhang2019Theoretically", "CIFAR10", threat="L2")


def test_main_tiny_refuses_a_cifar_teacher():
    tiny = {"dataset": "Tiny_Image", "datasets": ["Tiny_Image"], "teacher_model": "presnet18"}
    with pytest.raises(UserError, match="is a teacher for CIFAR10 and CIFAR100, not --dataset Tiny_Image.*the zoo has "
                                        "none"):
        parse_training("--teacher_path", "zoo:Chen2021LTD_WRN34_10", defaults=tiny)


def test_robustbench_name_is_the_teacher_model_and_its_folder_name_has_no_colon():
    config = parse_training("--method", "DGAD", "--teacher_path", "robustbench:Carmon2019Unlabeled")
    assert config.teacher_model == config.teacher_path == config.teacher_source == "robustbench:Carmon2019Unlabeled"
    args = build_parser(CIFAR_DEFAULTS, "t").parse_args(["--teacher_path", "robustbench:Carmon2019Unlabeled"])
    config = resolve(args)
    assert ":" not in os.path.basename(config.save_dir) and "T-robustbench-Carmon2019Unlabeled" in config.save_dir


def test_the_zoo_name_is_provenance_the_file_defines_the_run(monkeypatch, tmp_path):
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path))
    args = build_parser(CIFAR_DEFAULTS, "t").parse_args(["--teacher_path", "zoo:Chen2021LTD_WRN34_10"])
    by_name = resolve(args)
    by_path = resolve(build_parser(CIFAR_DEFAULTS, "t").parse_args(["--teacher_path", by_name.teacher_path]))
    assert by_name.save_dir == by_path.save_dir and by_path.teacher_source is None
    assert identity_differences(by_name.record(), by_path.record()) == []
    assert identity_differences(dict(by_name.record(), teacher_sha256="a"), dict(by_path.record(), teacher_sha256="b"))


def test_the_missing_default_teacher_names_the_zoo_flag_that_fetches_it():
    message = teacher_missing_message("wideresnet34_10", "checkpoints/teachers/CIFAR10/wideresnet34_10.pth", "CIFAR10")
    assert "--teacher_path zoo:Chen2021LTD_WRN34_10 --download" in message and "85.21% clean / 56.94% AutoAttack" in \
        message
    assert "--teacher_path zoo:Chen2021LTD_WRN34_10 --download" in teacher_missing_message("wideresnet34_10", "x",
                                                                                           "CIFAR100")
    assert "--teacher_st_path zoo:Standard --download" in teacher_missing_message("wideresnet28_10", "x", "CIFAR10",
                                                                                  natural=True)
    assert "zoo:" not in teacher_missing_message("presnet18", "x", "Tiny_Image")


def test_a_zoo_teacher_is_fetched_where_it_is_loaded_and_only_with_download(server, registry):
    server.serve("/t.pt", checkpoint_bytes())
    registry(entry_json("Tiny", [server.url("/t.pt")]))
    config = parse_training("--method", "DGAD", "--teacher_path", "zoo:Tiny")
    assert config.teacher_model == "wideresnet10_1"
    with pytest.raises(UserError, match="--teacher_path zoo:Tiny: the teacher is not in the cache yet .*--download"):
        require_teacher_file(config)
    fetched = parse_training("--method", "DGAD", "--teacher_path", "zoo:Tiny", "--download")
    require_teacher_file(fetched)
    teacher, file = load_teacher_and_file(fetched.teacher_model, fetched.teacher_path, "CIFAR10", 10, "cpu")
    assert file == fetched.teacher_path and not any(p.requires_grad for p in teacher.parameters())


def test_a_robustbench_teacher_is_loaded_through_load_robustbench(tmp_path, monkeypatch):
    robustbench = pytest.importorskip("teachers.robustbench", reason="teachers/robustbench.py is the other part of "
                                                                     "issue 22 (its own tests load real models)")
    file = tmp_path / "Carmon2019Unlabeled.pt"
    file.write_bytes(b"weights")
    calls = []

    def fake(name, dataset, threat="Linf", download=False):
        calls.append((name, dataset, download))
        return nn.Linear(2, 2), str(file)
    monkeypatch.setattr(robustbench, "load_robustbench", fake)
    teacher, path = load_teacher_and_file("robustbench:Carmon2019Unlabeled", "robustbench:Carmon2019Unlabeled",
                                          "CIFAR10", 10, "cpu", download=True)
    assert calls == [("Carmon2019Unlabeled", "CIFAR10", True)] and path == str(file)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    record = Trainee(nn.Linear(1, 1), teacher, None, None, {}, teacher_file=path).teacher_record()
    assert record == {"teacher_sha256": download.sha256_of(str(file)), "teacher_path": str(file)}


# -- main_eval.py, presets, bench.py ------------------------------------------------------------------------------

def parse_evaluation(*flags):
    return evaluation_parser(main_eval.DEFAULTS, "test").parse_args(list(flags))


def test_main_eval_evaluates_a_zoo_model_by_name(monkeypatch, tmp_path, server, registry):
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path))
    cfg = check_settings(parse_evaluation("--model_path", "zoo:Zhang2019Theoretically"))
    assert (cfg.model, cfg.model_source) == ("wideresnet34_10", "zoo:Zhang2019Theoretically")
    assert cfg.model_path == str(tmp_path / "CIFAR10" / "Zhang2019Theoretically.pt")
    assert check_settings(cfg).model == "wideresnet34_10"  # idempotent (reproduce.py checks, then the run does)
    assert check_settings(parse_evaluation("--model_path", "m.pth")).model == "resnet18"
    with pytest.raises(UserError, match="--model resnet18 conflicts with --model_path zoo:Zhang2019Theoretically"):
        check_settings(parse_evaluation("--model", "resnet18", "--model_path", "zoo:Zhang2019Theoretically"))
    with pytest.raises(UserError, match="is a teacher for CIFAR10, not --dataset CIFAR100"):
        check_settings(parse_evaluation("--dataset", "CIFAR100", "--model_path", "zoo:Zhang2019Theoretically"))
    with pytest.raises(UserError, match="main_eval.py evaluates the architectures of models/"):
        check_settings(parse_evaluation("--model_path", "robustbench:Carmon2019Unlabeled"))
    server.serve("/t.pt", checkpoint_bytes())
    registry(entry_json("Tiny", [server.url("/t.pt")]))
    with pytest.raises(UserError, match="--model_path zoo:Tiny: the teacher is not in the cache yet"):
        resolve_evaluation(parse_evaluation("--model_path", "zoo:Tiny"))
    cfg = resolve_evaluation(parse_evaluation("--model_path", "zoo:Tiny", "--download"))
    assert os.path.isfile(cfg.model_path) and cfg.out == f"{cfg.model_path}.eval.paper.json"


def write_preset(tmp_path, teacher):
    preset = {"dataset": "CIFAR10", "student": "wideresnet10_1", "methods": ["DGAD"], "seeds": [0],
              "teacher": teacher, "train": {"epochs": 1}, "evaluate": [{"protocol": "paper", "attacks": ["natural"]}]}
    path = tmp_path / "zoo-preset.json"
    path.write_text(json.dumps(preset))
    return str(path)


def test_a_preset_names_a_zoo_teacher_without_a_model_and_its_plan_checks_pass_without_downloading(
        tmp_path, monkeypatch, server):
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    preset = load_preset(write_preset(tmp_path, {"path": "zoo:Chen2021LTD_WRN34_10"}), training_switches())
    assert (preset.teacher.model, preset.teacher.path) == ("wideresnet34_10", "zoo:Chen2021LTD_WRN34_10")
    plan = Plan(preset, str(tmp_path / "root"), str(tmp_path / "data"))
    dgad = [job for job in plan.jobs if job.name == "train DGAD seed 0"][0]
    assert "--teacher_path zoo:Chen2021LTD_WRN34_10" in " ".join(dgad.commands[0])
    assert plan.configs["train DGAD seed 0"].teacher_source == "zoo:Chen2021LTD_WRN34_10"
    assert any("zoo:Chen2021LTD_WRN34_10 is not in the cache" in w and '"download": true' in w for w in plan.warnings)
    assert not os.path.exists(tmp_path / "cache")  # the plan fetched nothing
    with pytest.raises(UserError, match="'model' 'wideresnet34_20' conflicts with 'path' zoo:Chen2021LTD_WRN34_10"):
        load_preset(write_preset(tmp_path, {"model": "wideresnet34_20", "path": "zoo:Chen2021LTD_WRN34_10"}),
                    training_switches())
    with pytest.raises(UserError, match="preset zoo-preset teacher: 'path' zoo:Nope: no such teacher"):
        load_preset(write_preset(tmp_path, {"path": "zoo:Nope"}), training_switches())


def test_bench_loads_a_zoo_teacher_by_name(server, registry, tmp_path):
    import bench
    server.serve("/t.pt", checkpoint_bytes())
    registry(entry_json("Tiny", [server.url("/t.pt")]))
    cfg = bench.parse_args(["--method", "DGAD", "--model", "wideresnet10_1", "--teacher_path", "zoo:Tiny"])
    config = resolve(cfg)
    cfg.teacher_weights = config.teacher_path
    with pytest.raises(UserError, match="zoo:Tiny: the teacher is not in the cache yet"):
        bench.validate(cfg, config)
    cfg = bench.parse_args(["--method", "DGAD", "--model", "wideresnet10_1", "--teacher_path", "zoo:Tiny",
                            "--download"])
    config = resolve(cfg)
    cfg.teacher_weights = config.teacher_path
    bench.validate(cfg, config)
    assert os.path.isfile(config.teacher_path) and cfg.teacher_model == "wideresnet10_1"


# -- one epoch of DGAD with a zoo teacher served locally ------------------------------------------------------------

def test_dgad_trains_one_epoch_from_a_zoo_teacher_served_locally(real_data_dir, tmp_path, server, monkeypatch):
    body = checkpoint_bytes()
    server.serve("/uc?export=download&id=T", body)
    registry_file = tmp_path / "zoo.json"
    registry_file.write_text(json.dumps({"teachers": [entry_json("LocalWRN", [server.url("/uc?export=download&id=T")],
                                                                 sha256=download.hashlib.sha256(body).hexdigest())]}))
    monkeypatch.setenv(zoo.REGISTRY_ENV, str(registry_file))  # the testing and mirroring hook
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    save_dir = tmp_path / "run"
    args = ["main.py", "--method", "DGAD", "--model", "wideresnet10_1", "--teacher_path", "zoo:LocalWRN",
            "--data_dir", real_data_dir, "--train_subset", "64", "--test_subset", "32", "--bs", "32", "--eval_bs", "32",
            "--num_steps", "2", "--epochs", "1"]
    done = run_script(*args, "--download", "--save_dir", str(save_dir))
    assert done.returncode == 0, done.stderr
    assert "downloading zoo:LocalWRN" in done.stderr
    server.stop()  # a second run reads the cache: no network
    again = run_script(*args, "--save_dir", str(tmp_path / "run2"))
    assert again.returncode == 0, again.stderr
    assert "downloading" not in again.stderr
    config = json.load(open(save_dir / "config.json"))
    cached = str(tmp_path / "cache" / "CIFAR10" / "LocalWRN.pt")
    assert (config["teacher_source"], config["teacher_path"], config["teacher_model"]) == \
        ("zoo:LocalWRN", cached, "wideresnet10_1")
    assert config["teacher_sha256"] == download.hashlib.sha256(body).hexdigest()
    assert json.load(open(tmp_path / "run2" / "config.json"))["teacher_sha256"] == config["teacher_sha256"]


def zoo_table_rows(path):
    """(name, dataset, architecture, clean, AA) of each row of the zoo table in a markdown file."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if line.startswith("| `zoo:") and len(cells) >= 4:
                name = cells[0].split("`")[1][len("zoo:"):]
                numbers = cells[3].split("(")[0].split("/")
                clean, aa = (None if n.strip() == "–" else float(n) for n in numbers)
                rows.append((name, cells[1], cells[2].strip("`"), clean, aa))
    return rows


@pytest.mark.parametrize("document", ["docs/teachers.md"])
def test_the_zoo_tables_of_the_docs_are_the_registry(document):
    """The table is written by hand beside teachers/zoo.json: it must list every entry, with its numbers."""
    from teachers.zoo import load_registry
    expected = sorted((e.name, e.dataset, e.architecture, e.clean_acc, e.autoattack_acc) for e in load_registry())
    from helpers import REPO
    assert sorted(zoo_table_rows(os.path.join(REPO, document))) == expected


def test_every_zoo_row_elsewhere_in_the_docs_is_an_entry_of_the_registry():
    """README.md and the other docs pages may show a few of the zoo's rows: each must be the registry's."""
    import glob
    from teachers.zoo import load_registry
    from helpers import REPO
    entries = {(e.name, e.dataset, e.architecture, e.clean_acc, e.autoattack_acc) for e in load_registry()}
    documents = [os.path.join(REPO, "README.md")] + glob.glob(os.path.join(REPO, "docs", "*.md"))
    assert [(d, row) for d in documents for row in zoo_table_rows(d) if row not in entries] == []
