"""The lab through the web console in headless Chromium (Selenium), issue 18.

Run by tests/e2e_console.rs against `atrest console` with two access keys: the key
administrator (ATREST_ADMIN_*) and the key user (ATREST_USER_*), and a running
`atrest nbd serve --exports FILE` (ATREST_NBD, its address) that serves the lab's
root volume as the export `root`. Prints one line of JSON (what the Rust side checks
further in the trail). Screenshots of each lab step go to ATREST_CONSOLE_SCREENSHOTS.
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib

from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE = os.environ["ATREST_CONSOLE"].rstrip("/")
ADMIN = (os.environ["ATREST_ADMIN_ID"], os.environ["ATREST_ADMIN_SECRET"], os.environ["ATREST_ADMIN_ARN"])
USER = (os.environ["ATREST_USER_ID"], os.environ["ATREST_USER_SECRET"], os.environ["ATREST_USER_ARN"])
SHOTS = os.environ["ATREST_CONSOLE_SCREENSHOTS"]
SCRATCH = os.environ["ATREST_CONSOLE_SCRATCH"]
NBD = os.environ["ATREST_NBD"]
VOLUMES = os.path.join(os.environ["ATREST_HOME"], "volumes")
# What the lab's root volume holds (written through the export before the pages).
ROOT_DATA = b"".join(b"atrest lab root volume, block %06d\n" % i for i in range(32768))[:1 << 20]
XSS_KEY = "<img src=x onerror=alert(1)>.png"
BUCKET = "lab-bucket"
WAIT = 30


def clock_png(path, size=160):
    """A small clock face (a ring, two hands), written as a real PNG."""
    rows = []
    c = size / 2
    for y in range(size):
        row = bytearray([0])
        for x in range(size):
            dx, dy = x - c + 0.5, y - c + 0.5
            r = (dx * dx + dy * dy) ** 0.5
            ink = (c - 10 <= r <= c - 3) or (abs(dx) <= 3 and -c + 25 <= dy <= 0) or (abs(dy) <= 3 and 0 <= dx <= c - 40)
            row += bytes((30, 40, 60)) if ink else (bytes((250, 250, 245)) if r < c - 3 else bytes((255, 255, 255)))
        rows.append(bytes(row))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"".join(rows), 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def held_nbd_client(uri):
    """A libnbd client (the system python's `nbd` module) attached to `uri`, kept
    connected until its stdin closes: the client the exports page shows."""
    script = (
        "import nbd, sys\n"
        "h = nbd.NBD()\n"
        "h.connect_uri(sys.argv[1])\n"
        "h.pread(512, 0)\n"
        "print('attached', flush=True)\n"
        "sys.stdin.read()\n"
    )
    client = subprocess.Popen(["/usr/bin/python3", "-c", script, uri], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = client.stdout.readline()
    assert line.strip() == "attached", "the libnbd client did not attach: " + client.stderr.read()
    return client


def read_export(uri, path):
    """The export's first MiB, read by nbdcopy."""
    done = subprocess.run(["nbdcopy", uri, path], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, "nbdcopy: " + done.stderr
    with open(path, "rb") as f:
        return f.read(len(ROOT_DATA))


def browser(profile):
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,900", "--user-data-dir=" + profile):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    return driver


class Lab:
    def __init__(self, driver):
        self.d = driver
        self.shots = []

    def wait(self, what, check, timeout=WAIT):
        try:
            return WebDriverWait(self.d, timeout, poll_frequency=0.1).until(lambda d: check())
        except TimeoutException:
            raise AssertionError("timed out waiting for " + what + "; page: " + self.d.find_element(By.TAG_NAME, "body").text[:2000])

    def find(self, css):
        return self.d.find_element(By.CSS_SELECTOR, css)

    def text(self, css):
        try:
            found = self.d.find_elements(By.CSS_SELECTOR, css)
            return found[0].text if found else ""
        except StaleElementReferenceException:
            return ""

    def wait_text(self, css, needle):
        self.wait(css + " to show " + repr(needle), lambda: needle in self.text(css))
        return self.text(css)

    def shot(self, name):
        """The whole page (up to 2400 px tall) at the window's width."""
        time.sleep(0.2)
        size = self.d.get_window_size()
        height = self.d.execute_script("return document.documentElement.scrollHeight")
        viewport = self.d.execute_script("return window.innerHeight")
        self.d.set_window_size(size["width"], min(2400, size["height"] + max(0, height - viewport)))
        self.d.execute_script("window.scrollTo(0, 0)")
        path = os.path.join(SHOTS, name + ".png")
        self.d.save_screenshot(path)
        self.d.set_window_size(size["width"], size["height"])
        self.shots.append(path)

    def go(self, fragment):
        self.d.get(BASE + "/console/" + fragment)

    def sign_in(self, who):
        key_id, secret, arn = who
        self.go("#/keys")
        self.wait("the sign-in form", lambda: self.d.find_elements(By.ID, "access-key-id"))
        self.fill("#access-key-id", key_id)
        self.fill("#secret-access-key", secret)
        self.find("#signin").click()
        self.wait_text("#who", arn)

    def sign_out(self):
        self.find("#signout").click()
        self.wait("the sign-in form", lambda: self.d.find_elements(By.ID, "signin-form"))

    def fill(self, css, text):
        field = self.find(css)
        field.clear()
        field.send_keys(text)

    def no_alert(self):
        try:
            alert = self.d.switch_to.alert
            text = alert.text
            alert.dismiss()
            raise AssertionError("a script ran: alert(" + text + ")")
        except NoAlertPresentException:
            pass

    def console_api(self, path, body, headers):
        return self.d.execute_async_script(
            """
            const [path, body, headers, done] = arguments;
            fetch('/console/api/' + path, {method: 'POST', headers, body: JSON.stringify(body)})
              .then(async (r) => done({status: r.status, body: await r.text()}))
              .catch((e) => done({status: 0, body: String(e)}));
            """, path, body, headers)

    def csrf(self):
        return self.d.execute_async_script(
            "const done = arguments[0]; fetch('/console/api/session').then((r) => r.json()).then((s) => done(s.csrf));")

    def volume_action(self, source, button, expect):
        """Picks `source` on the volumes page and runs the action of `button`."""
        Select(self.find("#action-volume")).select_by_visible_text(source)
        self.find(button).click()
        return self.wait_text("#volume-action-result", expect)

    def upload(self, path, key, sse):
        self.find("#upload-file").send_keys(path)
        self.fill("#upload-key", key)
        Select(self.find("#upload-sse")).select_by_value(sse)
        self.find("#upload-submit").click()
        self.wait("the object page of " + key, lambda: self.text("#object-title") == key and self.text("#prop-size") != "")


def run(lab, clock, out):
    d = lab.d

    # A wrong secret is refused (and recorded by the server as a refused ConsoleLogin).
    lab.go("#/keys")
    lab.wait("the sign-in form", lambda: d.find_elements(By.ID, "access-key-id"))
    lab.find("#access-key-id").send_keys(ADMIN[0])
    lab.find("#secret-access-key").send_keys("not-the-secret")
    lab.find("#signin").click()
    lab.wait_text("#signin-result", "SignInRefused")
    assert lab.find("#secret-access-key").get_attribute("value") == "", "the secret stays in the form"
    lab.shot("00-sign-in-refused")

    # 1. The key administrator creates alias/MyKMSKey with the key user as user.
    lab.sign_in(ADMIN)
    lab.go("#/keys/new")
    lab.wait("the wizard", lambda: d.find_elements(By.ID, "key-alias"))
    lab.fill("#key-alias", "MyKMSKey")
    lab.fill("#key-description", "lab CMK <b>not bold</b>")
    lab.fill("#key-admins", ADMIN[2])
    lab.fill("#key-users", USER[2])
    policy = json.loads(lab.text("#policy-preview"))
    users = [s for s in policy["Statement"] if s["Sid"] == "Allow use of the key"]
    assert users and users[0]["Principal"]["AWS"] == [USER[2]], policy
    lab.shot("01-create-key-policy-preview")
    lab.find("#create-key-submit").click()
    lab.wait_text("#key-aliases", "alias/MyKMSKey")
    lab.wait_text("#key-state", "Enabled")
    assert lab.text("#key-description-view") == "lab CMK <b>not bold</b>", "the description is shown as text"
    key_arn = lab.text("#key-arn")
    key_id = key_arn.rsplit("/", 1)[1]
    out["keyArn"] = key_arn
    # Rotation: enable it and rotate once now.
    lab.find("#enable-rotation").click()
    lab.wait_text("#rotation-status", "Enabled")
    lab.find("#rotate-now").click()
    lab.wait("a rotation in the history", lambda: "ON_DEMAND" in lab.text("#rotation-history"))
    lab.shot("02-key-page")
    lab.go("#/keys")
    lab.wait_text("#keys-body", "alias/MyKMSKey")
    lab.wait_text("#keys-body", "Enabled")
    lab.shot("03-keys-list")
    lab.sign_out()

    # The key user may use the key, not manage it: Disable is refused.
    lab.sign_in(USER)
    lab.go("#/keys/" + key_id)
    lab.wait_text("#key-state", "Enabled")
    lab.find("#disable-key").click()
    lab.wait_text("#key-result", "AccessDeniedException")
    lab.wait_text("#key-state", "Enabled")
    lab.shot("04-key-user-refused-disable")

    # 6. The root volume, through the pages, as the key user (whom the key policy
    # lets use the key). The running server's export `root` serves root.vol to a
    # connected libnbd client.
    lab.go("#/exports")
    lab.wait("the attached client", lambda: lab.text("tr[data-export='root'] .export-clients") == "1")
    assert lab.text("tr[data-export='root'] .export-path").endswith("/root.vol")
    lab.wait_text("#servers", "exports.toml")
    assert d.find_elements(By.CSS_SELECTOR, "tr[data-client]"), "no client row"
    lab.wait_text("#gone-servers", str(out["stalePid"]))
    lab.shot("04a-exports-with-client")

    lab.go("#/volumes")
    lab.wait("the volume actions", lambda: "root.vol" in lab.text("#action-volume"))
    lab.fill("#snapshot-name", "root-snap")
    lab.volume_action("root.vol", "#snapshot-submit", "read-only")
    lab.wait("the snapshot row", lambda: "root-snap.vol" in lab.text("#volumes-body"))
    lab.fill("#copy-name", "root-enc")
    Select(lab.find("#copy-key")).select_by_value("alias/MyKMSKey")
    lab.volume_action("root-snap.vol", "#copy-submit", "root-enc.vol under " + key_arn)
    lab.wait("the encrypted copy", lambda: "Enabled" in lab.text("tr[data-volume='root-enc.vol']"))
    assert "No" in lab.text("tr[data-volume='root.vol']")
    assert "Yes" in lab.text("tr[data-volume='root-enc.vol']")
    assert key_id in lab.text("tr[data-volume='root-enc.vol']")
    lab.shot("04b-volumes-encrypted-copy")
    # A name that leaves the directory is refused, and nothing is written.
    lab.fill("#copy-name", "../escape")
    lab.volume_action("root-snap.vol", "#copy-submit", "ValidationException")
    assert not os.path.exists(os.path.join(os.environ["ATREST_HOME"], "escape.vol"))

    # The swap: the server's exports file is edited and the server reloads it.
    lab.go("#/exports")
    lab.wait("the swap form", lambda: d.find_elements(By.ID, "swap-target-root"))
    Select(lab.find("#swap-target-root")).select_by_visible_text("root-enc.vol")
    lab.find("#swap-root").click()
    lab.wait("the swapped export", lambda: lab.text("tr[data-export='root'] .export-path").endswith("/root-enc.vol"))
    lab.wait_text("#flash", "now serves")
    lab.shot("04c-export-swapped")
    # A real client reads the same bytes through the export, now encrypted on disk.
    served = read_export("nbd://%s/root" % NBD, os.path.join(SCRATCH, "root-read.img"))
    assert served == ROOT_DATA, "the swapped export does not serve the copy's data"
    with open(os.path.join(VOLUMES, "root-enc.vol"), "rb") as f:
        on_disk = f.read()
    assert ROOT_DATA[:64] not in on_disk, "the copy holds the data in the clear"
    with open(os.path.join(VOLUMES, "root.vol"), "rb") as f:
        assert ROOT_DATA[:64] in f.read(), "the unencrypted root volume holds it in the clear"

    # Rewrap the served copy's data key (ReEncrypt), and create a volume under the key.
    lab.go("#/volumes")
    lab.wait("the volume actions", lambda: "root-enc.vol" in lab.text("#action-volume"))
    lab.volume_action("root-enc.vol", "#rewrap-submit", "Rewrap: ")
    lab.fill("#create-name", "scratch")
    lab.fill("#create-size", "64")
    Select(lab.find("#create-key")).select_by_value("alias/MyKMSKey")
    lab.find("#create-submit").click()
    lab.wait_text("#volume-action-result", "scratch.vol under " + key_arn)
    lab.wait("the new volume", lambda: "Enabled" in lab.text("tr[data-volume='scratch.vol']"))
    lab.shot("04d-volumes-rewrap-create")
    served = read_export("nbd://%s/root" % NBD, os.path.join(SCRATCH, "root-read2.img"))
    assert served == ROOT_DATA, "the export changed after the rewrap"
    # A swap the server cannot carry out (another server writes to the volume, so it
    # cannot open it) is reported, and the exports file is put back.
    writer = subprocess.Popen([os.environ["ATREST_BIN"], "nbd", "serve", "--listen", "127.0.0.1:0",
                               "--export", "scratch=" + os.path.join(VOLUMES, "scratch.vol")],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        writer_status = os.path.join(os.environ["ATREST_HOME"], "run", "nbd", "%d.json" % writer.pid)
        lab.wait("the writer's status file", lambda: os.path.exists(writer_status))
        with open(os.environ["ATREST_NBD_EXPORTS"]) as f:
            before = f.read()
        failed = lab.console_api("exports/swap", {"pid": int(os.environ["ATREST_NBD_PID"]), "export": "root",
                                                  "volume": os.path.join(VOLUMES, "scratch.vol")},
                                 {"Content-Type": "application/json", "X-CSRF-Token": lab.csrf()})
        assert failed["status"] == 504 and "SwapNotConfirmed" in failed["body"], failed
        with open(os.environ["ATREST_NBD_EXPORTS"]) as f:
            assert f.read() == before, "the exports file was not put back"
    finally:
        writer.terminate()
        writer.wait(timeout=30)
    served = read_export("nbd://%s/root" % NBD, os.path.join(SCRATCH, "root-read3.img"))
    assert served == ROOT_DATA, "a failed swap changed the export"

    # 2. The key user's bucket, default encryption SSE-KMS with the key, clock.png.
    lab.go("#/buckets")
    lab.wait("the buckets page", lambda: d.find_elements(By.ID, "bucket-name"))
    lab.fill("#bucket-name", BUCKET)
    lab.find("#create-bucket").click()
    lab.wait("the bucket page", lambda: d.find_elements(By.ID, "save-encryption"))
    Select(lab.find("#encryption-type")).select_by_value("aws:kms")
    Select(lab.find("#encryption-key")).select_by_value("alias/MyKMSKey")
    if not lab.find("#encryption-bucket-key").is_selected():
        lab.find("#encryption-bucket-key").click()
    lab.find("#save-encryption").click()
    lab.wait_text("#encryption-current", "SSE-KMS")
    lab.wait_text("#encryption-current-key", "MyKMSKey")
    lab.wait_text("#encryption-current-bucket-key", "Enabled")
    lab.shot("05-bucket-default-encryption")
    lab.upload(clock, "clock.png", "alias/MyKMSKey")
    lab.wait_text("#prop-kms-key", key_arn)
    lab.wait_text("#prop-sse", "aws:kms")
    lab.wait_text("#prop-key-state", "Enabled")
    lab.shot("06-object-properties")

    # 3. Anonymous access fails, also once the object is marked public.
    lab.find("#try-anonymous").click()
    lab.wait_text("#anonymous-result", "AccessDenied")
    lab.find("#toggle-public").click()
    lab.wait_text("#acl-state", "Yes")
    lab.find("#try-anonymous").click()
    lab.wait_text("#anonymous-result", "InvalidArgument")
    lab.shot("07-anonymous-refused")

    # 4. Signed access works: the image is shown.
    lab.find("#open-object").click()
    lab.wait("the image", lambda: d.execute_script(
        "const i = document.getElementById('object-image'); return !!i && i.complete && i.naturalWidth > 0;"))
    assert d.execute_script("return document.getElementById('object-image').naturalWidth") == 160
    lab.shot("08-open-signed")

    # An object key made of markup is shown as text; no script runs.
    lab.go("#/buckets/" + BUCKET)
    lab.wait("the upload form", lambda: d.find_elements(By.ID, "upload-file"))
    lab.upload(clock, XSS_KEY, "")
    lab.no_alert()
    assert lab.text("#object-title") == XSS_KEY
    lab.go("#/buckets/" + BUCKET)
    lab.wait("the object list", lambda: XSS_KEY in lab.text("#objects-body"))
    lab.no_alert()
    injected = d.execute_script("return document.querySelectorAll('img[src=\"x\"], img[onerror]').length")
    assert injected == 0, "markup from an object key became elements"
    lab.shot("09-object-key-as-text")

    # 5. The events: GenerateDataKey (upload) and Decrypt (signed read) by the user.
    lab.go("#/events?eventName=GenerateDataKey")
    lab.wait("GenerateDataKey rows", lambda: d.find_elements(By.CSS_SELECTOR, "tr.event-row[data-event-name=GenerateDataKey]"))
    rows = d.find_elements(By.CSS_SELECTOR, "tr.event-row")
    assert all(r.get_attribute("data-event-name") == "GenerateDataKey" for r in rows)
    assert any(USER[2].rsplit("/", 1)[1] in r.get_attribute("data-user") for r in rows), [r.text for r in rows]
    lab.shot("10-events-generate-data-key")
    lab.fill("#filter-eventName", "Decrypt")
    lab.find("#filter-apply").click()
    lab.wait("Decrypt rows", lambda: d.find_elements(By.CSS_SELECTOR, "tr.event-row[data-event-name=Decrypt]"))
    decrypt = d.find_elements(By.CSS_SELECTOR, "tr.event-row[data-event-name=Decrypt]")[0]
    decrypt.click()
    detail = json.loads(lab.wait_text("#event-json", '"Decrypt"'))
    assert detail["userIdentity"]["arn"] == USER[2], detail["userIdentity"]
    assert detail["requestParameters"]["encryptionContext"], detail
    lab.shot("11-events-decrypt-json")
    lab.go("#/events")
    lab.wait("the chart", lambda: d.find_elements(By.ID, "chart-svg"))
    lab.find("#validate-trail").click()
    lab.wait_text("#validate-result", "Valid:")
    lab.shot("12-events-validate-chart")
    lab.sign_out()

    # A state-changing request without the CSRF token is refused (the administrator
    # would be allowed DisableKey), and so is one that is not JSON.
    lab.sign_in(ADMIN)
    lab.go("#/keys/" + key_id)
    lab.wait_text("#key-state", "Enabled")
    csrf_less = lab.console_api("kms", {"operation": "DisableKey", "input": {"KeyId": key_id}},
                                {"Content-Type": "application/json"})
    assert csrf_less["status"] == 403 and "InvalidCsrfToken" in csrf_less["body"], csrf_less
    form_like = lab.console_api("kms", {"operation": "DisableKey", "input": {"KeyId": key_id}},
                                {"Content-Type": "text/plain"})
    assert form_like["status"] == 415, form_like
    plaintext = lab.console_api("kms", {"operation": "GenerateDataKey", "input": {"KeyId": key_id}},
                                {"Content-Type": "application/json", "X-CSRF-Token": "wrong"})
    assert plaintext["status"] == 403, plaintext
    out["csrfRefused"] = csrf_less["status"]

    # The administrator may manage the key, not use it: an encrypted copy of the
    # served volume (Decrypt of its data key) and a swap of its export are refused.
    lab.go("#/volumes")
    lab.wait("the volume actions", lambda: "root-enc.vol" in lab.text("#action-volume"))
    lab.fill("#copy-name", "admin-copy")
    Select(lab.find("#copy-key")).select_by_value("alias/MyKMSKey")
    lab.volume_action("root-enc.vol", "#copy-submit", "AccessDeniedException")
    assert not os.path.exists(os.path.join(VOLUMES, "admin-copy.vol"))
    lab.go("#/exports")
    lab.wait("the swap form", lambda: d.find_elements(By.ID, "swap-target-root"))
    Select(lab.find("#swap-target-root")).select_by_visible_text("root.vol")
    lab.find("#swap-root").click()
    lab.wait_text("[id^='swap-result-']", "AccessDeniedException")
    assert lab.text("tr[data-export='root'] .export-path").endswith("/root-enc.vol")
    lab.shot("13a-admin-refused-swap")
    # The swap, like every action, needs the CSRF token.
    csrf_less = lab.console_api("exports/swap", {"pid": 0, "export": "root", "volume": ""},
                                {"Content-Type": "application/json"})
    assert csrf_less["status"] == 403 and "InvalidCsrfToken" in csrf_less["body"], csrf_less
    # A server without an exports file cannot swap: the page and the API say so.
    other = subprocess.Popen([os.environ["ATREST_BIN"], "nbd", "serve", "--listen", "127.0.0.1:0", "--read-only",
                              "--export", "snap=" + os.path.join(VOLUMES, "root-snap.vol")],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        status = os.path.join(os.environ["ATREST_HOME"], "run", "nbd", "%d.json" % other.pid)
        lab.wait("the second server's status file", lambda: os.path.exists(status))
        lab.go("#/exports?again")  # another hash: the page renders anew
        lab.wait_text("#exports-file-%d" % other.pid, "no swap while it runs")
        assert not lab.find("#server-%d #swap-snap" % other.pid).is_enabled()
        refused = lab.console_api("exports/swap", {"pid": other.pid, "export": "snap",
                                                   "volume": os.path.join(VOLUMES, "root-enc.vol")},
                                  {"Content-Type": "application/json", "X-CSRF-Token": lab.csrf()})
        assert refused["status"] == 409 and "NoExportsFile" in refused["body"], refused
    finally:
        other.terminate()
        other.wait(timeout=30)
    assert not os.path.exists(status), "the stopped server left its status file"
    lab.go("#/keys/" + key_id)
    lab.wait_text("#key-state", "Enabled")

    # 7. The administrator disables the key: the key page, the object and the
    # object's read all show it.
    lab.find("#disable-key").click()
    lab.wait_text("#key-state", "Disabled")
    lab.shot("13-admin-disables-key")
    lab.sign_out()
    lab.sign_in(USER)
    lab.go("#/object/" + BUCKET + "/clock.png")
    lab.wait_text("#prop-key-state", "Disabled")
    lab.find("#open-object").click()
    lab.wait_text("#open-result", "KMS.DisabledException")
    lab.shot("14-object-read-fails-disabled")
    lab.go("#/volumes")
    lab.wait("the volume's key disabled", lambda: "Disabled" in lab.text("tr[data-volume='root-enc.vol']"))
    lab.shot("14b-volume-key-disabled")
    lab.sign_out()

    # Enabled again, the read works; deletion is scheduled with a waiting period and
    # cancelled.
    lab.sign_in(ADMIN)
    lab.go("#/keys/" + key_id)
    lab.wait_text("#key-state", "Disabled")
    lab.find("#enable-key").click()
    lab.wait_text("#key-state", "Enabled")
    lab.fill("#deletion-days", "7")
    lab.find("#schedule-deletion").click()
    lab.wait_text("#key-state", "PendingDeletion")
    lab.wait("a deletion date", lambda: lab.text("#key-deletion-date") not in ("", "—"))
    lab.shot("15-deletion-scheduled")
    lab.find("#cancel-deletion").click()
    lab.wait_text("#key-state", "Disabled")
    lab.find("#enable-key").click()
    lab.wait_text("#key-state", "Enabled")
    lab.sign_out()
    lab.sign_in(USER)
    lab.go("#/object/" + BUCKET + "/clock.png")
    lab.wait_text("#prop-key-state", "Enabled")
    lab.find("#open-object").click()
    lab.wait("the image again", lambda: d.execute_script(
        "const i = document.getElementById('object-image'); return !!i && i.complete && i.naturalWidth > 0;"))

    # A phone-sized window: the pages fit without sideways scrolling.
    d.set_window_size(390, 844)
    lab.go("#/events")
    lab.wait("the events table", lambda: d.find_elements(By.CSS_SELECTOR, "tr.event-row"))
    overflow = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, "the events page is wider than a phone: %s px" % overflow
    lab.shot("16-phone-events")
    lab.go("#/object/" + BUCKET + "/clock.png")
    lab.wait_text("#prop-key-state", "Enabled")
    overflow = d.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1, "the object page is wider than a phone: %s px" % overflow
    d.set_window_size(1280, 900)

    # Sign-out ends the session on the server, not only in the page.
    lab.sign_out()
    after = lab.d.execute_async_script(
        "const done = arguments[0]; fetch('/console/api/session').then((r) => done(r.status));")
    assert after == 401, after

    # No script or style was blocked by the CSP and no page error was logged.
    errors = [e for e in d.get_log("browser") if e["level"] == "SEVERE"
              and "Content Security Policy" in e["message"]]
    assert not errors, errors
    out["screenshots"] = len(lab.shots)
    return out


def stale_status_file():
    """The status file a killed server leaves: its pid names no process now."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    run_dir = os.path.join(os.environ["ATREST_HOME"], "run", "nbd")
    live = [f for f in os.listdir(run_dir) if f.endswith(".json")]
    with open(os.path.join(run_dir, live[0])) as f:
        status = json.load(f)
    status["pid"] = gone.pid
    path = os.path.join(run_dir, "%d.json" % gone.pid)
    with open(path, "w") as f:
        json.dump(status, f)
    os.chmod(path, 0o600)
    return gone.pid


def main():
    profile = tempfile.mkdtemp(prefix="atrest-chromium-", dir=SCRATCH)
    clock = os.path.join(SCRATCH, "clock.png")
    clock_png(clock)
    # The root volume's data, written through the export by nbdcopy.
    data = os.path.join(SCRATCH, "root-data.img")
    with open(data, "wb") as f:
        f.write(ROOT_DATA)
    done = subprocess.run(["nbdcopy", data, "nbd://%s/root" % NBD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, "nbdcopy: " + done.stderr
    client = held_nbd_client("nbd://%s/root" % NBD)
    driver = browser(profile)
    try:
        out = run(Lab(driver), clock, {"stalePid": stale_status_file()})
    finally:
        driver.quit()
        client.stdin.close()
        client.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
