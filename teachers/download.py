"""Fetching a zoo teacher into the cache, on the standard library alone (urllib): each mirror in
order, Google Drive's confirmation page for large files followed, the body checked (not an HTML
page, not cut short, a torch checkpoint, the registry's sha256) before it is renamed into place, so
that a file in the cache is always a whole one. A file already in the cache is used without
touching the network. Every failure is one line naming the URL(s) and where to place the file by hand."""
import contextlib
import fcntl
import hashlib
import html
import html.parser
import http.client
import http.cookiejar
import os
import re
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from typing import Dict, List, Optional, Tuple

from runtime.checkpoints import sha256_of
from runtime.errors import UserError, report
from runtime.progress import Progress

from .zoo import CACHE_ENV, ZooEntry, cached_path

TIMEOUT = 60.0  # seconds a connection or a read may stall
CHUNK = 1 << 20
MAX_PAGE = 1 << 20  # an HTML page larger than this is not Drive's confirmation page
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's container since torch 1.6
# torch.save's legacy format starts with its pickled magic number (protocol 2, the long 0x1950a86a20f9469cfc6c).
LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
MISMATCH_SUFFIX = ".sha256-mismatch"


class DownloadFailed(Exception):
    """One URL did not give the teacher; the message says why (collected over the mirrors)."""


def manual_fallback(entry: ZooEntry) -> str:
    return (f"download {entry.urls[0]} yourself (in a browser if need be) and place the file at {cached_path(entry)}"
            + (f" (its sha256 must be {entry.sha256})" if entry.sha256 else ""))


def check_cached(entry: ZooEntry, path: str, flag: str) -> None:
    """A file in the cache (downloaded, or placed by hand) against the registry's sha256; a mismatch is put
    aside, never used."""
    if entry.sha256 is None:
        return
    actual = sha256_of(path)
    if actual != entry.sha256:
        aside = path + MISMATCH_SUFFIX
        os.replace(path, aside)
        raise UserError(f"{flag} {entry.source}: {path} has sha256 {actual}, not the registry's {entry.sha256}; it "
                        f"was moved aside to {aside} and is not used; {manual_fallback(entry)}")


def ensure(entry: ZooEntry, download: bool, flag: str = "--teacher_path") -> str:
    """The cached file of `entry`: the one in the cache (no network), else, with `download`, fetched."""
    path = cached_path(entry)
    if os.path.isfile(path):
        check_cached(entry, path, flag)
        return path
    if not download:
        raise UserError(f"{flag} {entry.source}: the teacher is not in the cache yet ({path}); add --download to "
                        f"fetch it, or {manual_fallback(entry)}")
    return fetch(entry, flag)


def writable_folder(folder: str, entry: ZooEntry) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise UserError(f"the teacher cache {folder} cannot be made ({exc.strerror or exc}): set {CACHE_ENV} to a "
                        f"writable folder ({entry.source} then goes to ${CACHE_ENV}/{entry.dataset}/"
                        f"{entry.file_name})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"the teacher cache {folder} is not writable: set {CACHE_ENV} to a writable folder "
                        f"({entry.source} then goes to ${CACHE_ENV}/{entry.dataset}/{entry.file_name})")


@contextlib.contextmanager
def folder_lock(folder: str):
    """One process at a time fetches into `folder` (the processes of a torchrun job, parallel runs of
    reproduce.py): the others wait, then find the file in the cache."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def fetch(entry: ZooEntry, flag: str = "--teacher_path") -> str:
    path = cached_path(entry)
    folder = os.path.dirname(path)
    writable_folder(folder, entry)
    with folder_lock(folder):
        if os.path.isfile(path):  # another process fetched it while this one waited
            check_cached(entry, path, flag)
            return path
        failures = []
        for url in entry.urls:
            report(f"downloading {entry.source} ({entry.dataset}, {entry.architecture}) from {url}")
            try:
                actual = download_to(url, path, entry)
            except DownloadFailed as failed:
                failures.append(f"{url}: {failed}")
                continue
            if entry.sha256 is None:
                report(f"{entry.source}: saved {path}, sha256 {actual} (the registry publishes none to check it "
                       f"against; the run records it)")
            else:
                report(f"{entry.source}: saved {path}, sha256 {actual} as the registry's")
            return path
    raise UserError(f"{flag} {entry.source}: the download failed ({'; '.join(failures)}); {manual_fallback(entry)}")


# -- one URL -------------------------------------------------------------------------------------

class _Forms(html.parser.HTMLParser):
    """The forms of a page (action and input values) and its title."""

    def __init__(self):
        super().__init__()
        self.forms: List[Tuple[str, Dict[str, str]]] = []
        self.title, self._in_title = "", False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form":
            self.forms.append((attrs.get("action") or "", {}))
        elif tag == "input" and self.forms and attrs.get("name"):
            self.forms[-1][1][attrs["name"]] = attrs.get("value") or ""
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title += data


def parse_page(page: bytes) -> _Forms:
    parser = _Forms()
    with contextlib.suppress(Exception):  # a malformed page is still described by what was parsed
        parser.feed(page.decode("utf-8", "replace"))
    return parser


def confirmation_url(page: bytes, url: str) -> Optional[str]:
    """Where Google Drive's "can't scan this file for viruses" page sends the download: its form (action
    plus hidden inputs: id, export, confirm, uuid), or, on older pages, a link or the URL with confirm=TOKEN."""
    parsed = parse_page(page)
    for action, fields in parsed.forms:
        if "confirm" in fields or ("id" in fields and "download" in action):
            return urllib.parse.urljoin(url, action) + "?" + urllib.parse.urlencode(fields)
    text = page.decode("utf-8", "replace")
    link = re.search(r'href="([^"]*confirm=[^"]*)"', text)
    if link:
        return urllib.parse.urljoin(url, html.unescape(link.group(1)))
    token = re.search(r"confirm=([0-9A-Za-z_\-]+)", text)
    if token:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query), confirm=token.group(1))
        uuid = re.search(r'name="uuid" value="([^"]+)"', text)
        if uuid:
            query["uuid"] = uuid.group(1)
        return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(query=urllib.parse.urlencode(query)))
    return None


def describe_page(page: bytes) -> str:
    title = " ".join(parse_page(page).title.split())
    return f"an HTML page{f' ({title!r})' if title else ''} instead of the checkpoint"


def open_body(url: str):
    """The response whose body is the file: Drive's confirmation page followed (at most twice)."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    target = url
    for _ in range(3):
        response = opener.open(urllib.request.Request(target, headers={"User-Agent": "advkd-teachers"}),
                               timeout=TIMEOUT)
        if response.headers.get_content_type() != "text/html":
            return response
        page = response.read(MAX_PAGE)
        response.close()
        follow = confirmation_url(page, response.geturl())
        if follow is None:
            raise DownloadFailed(f"the server sent {describe_page(page)} (a quota, permission or sign-in page?)")
        target = follow
    raise DownloadFailed("Google Drive asked for confirmation again after it was given")


def checkpoint_kind(head: bytes) -> Optional[str]:
    if head.startswith(ZIP_MAGIC):
        return "zip"
    if head.startswith(LEGACY_MAGIC):
        return "legacy"
    return None


def describe_body(head: bytes) -> str:
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<")):
        return describe_page(head)
    if stripped.startswith((b"{", b"[")):
        return "a JSON document instead of the checkpoint"
    return f"not a torch checkpoint (it starts with {head[:8]!r})"


def download_to(url: str, path: str, entry: ZooEntry) -> str:
    """Fetch `url` into `path` atomically; its sha256. Raises DownloadFailed naming what went wrong."""
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".part", dir=folder)
    try:
        digest, received, head = hashlib.sha256(), 0, b""
        try:
            response = open_body(url)
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            mib = -(-expected // CHUNK) if expected else 0
            with os.fdopen(fd, "wb") as out, response, \
                    Progress(mib, f"{entry.source}", unit="MiB", every=30.0) as progress:
                fd = None
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    if len(head) < 64:
                        head += chunk[:64]
                    digest.update(chunk)
                    out.write(chunk)
                    progress.update((received + len(chunk)) // CHUNK - received // CHUNK)
                    received += len(chunk)
                out.flush()
                os.fsync(out.fileno())
        except DownloadFailed:
            raise
        except http.client.IncompleteRead as exc:
            raise DownloadFailed(f"the body was cut short ({received + len(exc.partial)} of "
                                 f"{expected if expected is not None else 'an unknown number of'} bytes)") from None
        except urllib.error.HTTPError as exc:
            raise DownloadFailed(f"HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise DownloadFailed(f"{getattr(exc.reason, 'strerror', None) or exc.reason}") from None
        except (socket.timeout, TimeoutError):
            raise DownloadFailed(f"no data for {TIMEOUT:g} s (timed out)") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise DownloadFailed(f"{type(exc).__name__}: {exc}") from None
        if expected is not None and received != expected:
            raise DownloadFailed(f"the body was cut short ({received} of {expected} bytes)")
        kind = checkpoint_kind(head)
        if kind is None:
            raise DownloadFailed(f"the server sent {describe_body(head)}")
        if kind == "zip" and not zipfile.is_zipfile(tmp):
            raise DownloadFailed(f"the body was cut short: its zip container has no end record ({received} bytes "
                                 f"received)")
        actual = digest.hexdigest()
        if entry.sha256 is not None and actual != entry.sha256:
            aside = path + MISMATCH_SUFFIX
            os.replace(tmp, aside)
            raise DownloadFailed(f"sha256 {actual} is not the registry's {entry.sha256} (kept aside as {aside}, "
                                 f"not used)")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return actual
    finally:
        if fd is not None:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
