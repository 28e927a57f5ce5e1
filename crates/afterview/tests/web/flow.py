"""The web app in headless Chromium (Playwright driving Debian's chromium), at desktop and phone
sizes: sign-in (a wrong token, then the right one), upload with face detection (and a photo
without a face), a preview with the before/after slider by pointer and keyboard, a comparison
grid, the cost infographic, a patient report downloaded as a PDF, history with pagination and
reopening a preview, a late answer or preview for a photo let go (dropped; the preview cancelled), cancelling a task that waits, photo deletion, and the operators' monitor
(live queues, workers and tasks, revoke; 404 for a non-operator).

Run by crates/afterview/tests/it/web.rs with:
  BASE        a `serve` with a worker        BASE_IDLE  a `serve --no-worker` (same stores)
  ALICE       an operator's token            BOB        another user's token
  PORTRAITS   testdata/portraits             SHOTS      where screenshots go
  CHROMIUM    the browser binary
Exits non-zero with a message on the first failure.
"""

import base64
import json
import os
import re
import sys

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["BASE"]
BASE_IDLE = os.environ["BASE_IDLE"]
ALICE = os.environ["ALICE"]
BOB = os.environ["BOB"]
PORTRAITS = os.environ["PORTRAITS"]
SHOTS = os.environ["SHOTS"]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
TIMEOUT = 60_000

os.makedirs(SHOTS, exist_ok=True)
expect.set_options(timeout=TIMEOUT)

SIZES = {
    "desktop": dict(viewport={"width": 1280, "height": 900}),
    "phone": dict(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True),
}


def shot(page, name, size, full=False):
    """A JPEG screenshot (small enough to keep in docs/)."""
    page.screenshot(path=f"{SHOTS}/{name}-{size}.jpg", type="jpeg", quality=80, full_page=full)


def watch(page, errors):
    """Collects the page's script errors and console errors. A fetch answered 4xx/5xx is
    logged by Chromium itself as 'Failed to load resource'; the flows below provoke some on
    purpose (a wrong token, a photo without a face), so those lines are not the app's errors."""
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    page.on(
        "console",
        lambda m: m.type == "error"
        and not m.text.startswith("Failed to load resource")
        and errors.append(f"console: {m.text}"),
    )
    page.on("dialog", lambda d: d.accept())


def sign_in(page, token, base=BASE):
    page.goto(base + "/")
    signed_in = page.get_by_role("heading", name="Consultation")
    expect(page.get_by_role("heading", name="Sign in").or_(signed_in)).to_be_visible()
    if signed_in.is_visible():
        page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Consultation")).to_be_visible()


def drop_file(page, path, mime):
    """Drops a file on the drop zone, as a person dragging it from their desktop would."""
    data = base64.b64encode(open(path, "rb").read()).decode()
    dt = page.evaluate_handle(
        """([b64, name, type]) => {
            const bin = atob(b64);
            const bytes = new Uint8Array(bin.length);
            for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type }));
            return dt;
        }""",
        [data, os.path.basename(path), mime],
    )
    page.dispatch_event("#drop", "dragover", {"dataTransfer": dt})
    page.dispatch_event("#drop", "drop", {"dataTransfer": dt})
    expect(page.locator("#photo-img")).to_be_visible()


def upload(page, path):
    """Chooses a photo and waits until it is the one shown: the photo before it (and its
    caption, "Face found") stays on screen until the upload is answered."""
    before = page.locator("#photo-img").get_attribute("src") or ""
    page.get_by_label("Photo", exact=True).set_input_files(path)
    expect(page.locator("#photo-img")).not_to_have_attribute("src", before)
    expect(page.locator("#photo-img")).to_be_visible()


def consultation(page, size):
    # A wrong token is refused with the API's message, and nothing else happens.
    page.goto(BASE + "/")
    page.get_by_label("Access token").fill("not-a-real-token-0123456789")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text(re.compile("token|credentials", re.I))
    shot(page, "signin", size)
    page.get_by_label("Access token").fill(ALICE)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Consultation")).to_be_visible()

    # A photo without a face, dropped on the page, says so, and nothing can be generated from it.
    drop_file(page, f"{PORTRAITS}/no_face_coffee.png", "image/png")
    expect(page.locator("#face-caption")).to_contain_text("No face was found")
    page.get_by_role("checkbox", name=re.compile("^Rhinoplasty")).check()
    expect(page.locator("#generate-hint")).to_contain_text("choose another photo")
    expect(page.get_by_role("button", name="Generate preview")).to_be_disabled()
    page.get_by_role("checkbox", name=re.compile("^Rhinoplasty")).uncheck()

    # A portrait: the face is found and marked.
    upload(page, f"{PORTRAITS}/grace_hopper.jpg")
    expect(page.locator("#face-caption")).to_contain_text("Face found")
    expect(page.locator("#face-box")).to_be_visible()

    # One procedure: a preview with live progress, then the before/after slider.
    page.get_by_role("checkbox", name=re.compile("^Rhinoplasty")).check()
    page.get_by_label("Intensity").select_option("pronounced")
    page.get_by_role("button", name="Generate preview").click()
    slider = page.get_by_role("slider", name="Before/after")
    expect(slider).to_be_visible()
    expect(page.locator("#after-img")).to_have_attribute("src", re.compile("^blob:"))
    expect(slider).to_have_attribute("aria-valuenow", "50")
    # Zoomed to the face: the pictures are larger than the frame that shows them.
    expect(page.locator("#compare")).to_have_class(re.compile("cropped"))
    frame_w = page.locator("#compare").bounding_box()["width"]
    assert page.locator("#after-img").bounding_box()["width"] > frame_w * 1.05, "zoomed in"
    slider.focus()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(slider).to_have_attribute("aria-valuenow", "46")
    page.keyboard.press("End")
    expect(slider).to_have_attribute("aria-valuenow", "100")
    # Only the photo shows now: the "After" tag is not over it.
    expect(page.locator(".compare .tag.right")).to_be_hidden()
    expect(page.locator(".compare .tag.left")).to_be_visible()
    box = page.locator("#compare").bounding_box()
    page.mouse.click(box["x"] + box["width"] * 0.25, box["y"] + box["height"] / 2)
    now = int(slider.get_attribute("aria-valuenow"))
    assert 20 <= now <= 30, f"a click at a quarter puts the handle there, got {now}"
    if size == "desktop":
        # Dragging the handle itself with a mouse follows the pointer to where it is let go,
        # and the slider stops following once the button is up.
        hb = page.locator("#handle").bounding_box()
        page.mouse.move(hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.8, box["y"] + box["height"] / 2, steps=12)
        page.mouse.up()
        now = int(slider.get_attribute("aria-valuenow"))
        assert 75 <= now <= 85, f"a drag to 80 % leaves the handle there, got {now}"
        page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] / 2, steps=4)
        assert int(slider.get_attribute("aria-valuenow")) == now, "no drag after the button is up"
    shot(page, "preview", size, full=True)

    # Costs and the patient report.
    page.get_by_role("button", name="Show cost breakdown").click()
    expect(page.get_by_role("img", name="Cost breakdown of the chosen procedures")).to_be_visible()
    expect(page.get_by_role("link", name="Open the cost breakdown full size")).to_have_attribute("href", re.compile("^blob:"))
    page.get_by_label("Patient name").fill("Jane Example")
    page.get_by_label("Clinic").fill("Example Clinic")
    page.get_by_label("Goals and notes").fill("A straighter nasal bridge.")
    page.get_by_role("button", name="Create report").click()
    link = page.get_by_role("link", name="Download report")
    expect(link).to_be_visible()
    with page.expect_download() as dl:
        link.click()
    d = dl.value
    assert d.suggested_filename.endswith(".pdf"), d.suggested_filename
    with open(d.path(), "rb") as f:
        assert f.read(5) == b"%PDF-", "the report is a PDF"

    # 2-4 procedures: a comparison grid (a fifth cannot be picked).
    for name in ["Facelift", "Brow lift", "Lip augmentation"]:
        page.get_by_role("checkbox", name=re.compile("^" + name)).check()
    expect(page.get_by_role("checkbox", name=re.compile("^Otoplasty"))).to_be_disabled()
    page.get_by_role("button", name="Generate comparison").click()
    expect(page.locator("#comparison-grid figure")).to_have_count(5)
    expect(page.locator("#comparison-grid figure a[target=_blank]")).to_have_count(5)
    # Zoomed tiles leave out the pictures' own SIMULATION corner: each after tile has a badge.
    expect(page.locator("#comparison-grid .badge")).to_have_count(4)
    expect(page.get_by_role("img", name="Brow lift (simulation)")).to_be_visible()
    shot(page, "comparison", size, full=True)

    # The next photo may be another patient's: the report form and the results are cleared.
    page.get_by_label("Patient name").fill("Jane Example")
    upload(page, f"{PORTRAITS}/astronaut.png")
    expect(page.get_by_label("Patient name")).to_have_value("")
    expect(page.locator("#result")).to_be_hidden()

    # A photo the server cannot read leaves the current one in place and says what to do.
    page.get_by_label("Photo", exact=True).set_input_files(
        files=[{"name": "broken.jpg", "mimeType": "image/jpeg", "buffer": b"\xff\xd8\xff\xe0broken"}]
    )
    expect(page.get_by_role("alert")).to_contain_text("choose another photo")
    expect(page.locator("#photo-img")).to_be_visible()


def history(page, size):
    # Eleven photos more than a page holds: "More photos" fetches the next page.
    png = open(f"{PORTRAITS}/astronaut.png", "rb").read()
    for i in range(11):
        r = page.request.post(
            BASE + "/api/images",
            headers={"Authorization": f"Bearer {ALICE}"},
            multipart={"file": {"name": f"p{i}.png", "mimeType": "image/png", "buffer": png}},
        )
        assert r.status == 201, r.text()
    asked = []
    listen = lambda r: asked.append(r.url)
    page.on("request", listen)
    page.get_by_role("link", name="History").click()
    expect(page.get_by_role("heading", name="History")).to_be_visible()
    photos = page.locator("#h-images li")
    expect(photos).to_have_count(10)
    # Each photo and preview shows a small picture of itself: the server's small copy (256 px
    # at most), never the full-size picture (a phone's photo is megabytes).
    thumb = photos.first.locator("img.thumb")
    expect(thumb).to_have_attribute("src", re.compile("^data:image/jpeg"))
    expect(page.locator("#h-visualizations li img.thumb").first).to_have_attribute("src", re.compile("^data:image/jpeg"))
    page.wait_for_function("t => t.complete && t.naturalWidth === 256", arg=thumb.element_handle())
    page.remove_listener("request", listen)
    assert any(u.split("?")[0].endswith("/thumbnail") for u in asked), asked
    full = [u for u in asked if re.search(r"/(content|image)(\?|$)", u)]
    assert not full, full
    page.get_by_role("button", name="More photos").click()
    expect(photos).to_have_count(14)
    expect(page.get_by_role("button", name="More photos")).to_be_hidden()
    expect(page.locator("#h-tasks li").first).to_contain_text("SUCCESS")
    expect(page.locator("#h-exports li").first).to_contain_text(re.compile("report|infographic", re.I))
    shot(page, "history", size, full=True)
    # Reopen a single preview.
    page.locator("#h-visualizations li", has_text=re.compile("^Rhinoplasty")).first.get_by_role("button", name="Open").click()
    expect(page.get_by_role("slider", name="Before/after")).to_be_visible()


def delete_photo(page):
    page.get_by_role("button", name=re.compile("^Delete photo")).click()
    expect(page.get_by_role("alert")).to_contain_text("deleted")
    expect(page.locator("#photo-view")).to_be_hidden()


def hold_first_face(page):
    """Holds back the first face detection the page asks for (the routes held are collected
    in the list returned, with the pattern to unroute)."""
    held = []

    def hold(route):
        if held:
            route.continue_()
        else:
            held.append(route)

    face = re.compile(r"/api/images/[0-9a-f-]+/face$")
    page.route(face, hold)
    return held, face


def late_result_pictures(page):
    """A result whose pictures are still loading when another is opened never lands over it:
    the first result's pictures are held back while a second entry of History opens, then let
    through; the second result keeps the screen."""
    held = []
    holding = [True]

    def hold(route):
        if holding[0]:
            held.append(route)
        else:
            route.continue_()

    pictures = re.compile(r"/api/visualizations/[0-9a-f-]+/image")
    page.route(pictures, hold)
    page.get_by_role("link", name="History").click()
    entries = page.locator("#h-visualizations li")
    entries.filter(has_text=re.compile("^Rhinoplasty")).first.get_by_role("button", name="Open").click()
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the first result's picture was asked for"
    holding[0] = False
    page.get_by_role("link", name="History").click()
    other = entries.filter(has_not_text=re.compile("^Rhinoplasty")).first
    other.get_by_role("button", name="Open").click()
    title = page.locator("#result-title")
    expect(title).not_to_have_text("Preview: Rhinoplasty")
    expect(page.locator("#result-status")).to_contain_text("ready")
    shown = title.text_content()
    after = page.locator("#after-img").get_attribute("src")
    for r in held:
        r.continue_()
    page.wait_for_timeout(1000)
    page.unroute(pictures)
    expect(title).to_have_text(shown)
    assert page.locator("#after-img").get_attribute("src") == after, "a late picture landed"


def double_click_posts_once(page, pattern, button, what):
    """Double-clicks `button` with the POSTs to `pattern` held back; exactly one must be asked
    for, and the button waits (disabled) for its answer. Lets it through."""
    held = []

    def hold(route):
        if route.request.method == "POST":
            held.append(route)
        else:
            route.continue_()

    page.route(pattern, hold)
    button.dblclick()
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(50)
    page.wait_for_timeout(500)
    assert len(held) == 1, f"{len(held)} {what} asked for by one double click"
    expect(button).to_be_disabled()
    for r in held:
        r.continue_()
    page.unroute(pattern)


def one_report_per_click(page):
    """A double click on Create report makes one report."""
    create = page.get_by_role("button", name="Create report")
    double_click_posts_once(page, re.compile(r"/api/exports$"), create, "reports")
    expect(page.locator("#report-link")).to_be_visible()
    expect(create).to_be_enabled()


def busy_server_is_asked_again(page):
    """A server that answers 503 (restarting) is asked again after its Retry-After, and a photo
    over the upload limit is refused before it is sent."""
    answered = []

    def busy_once(route):
        if answered:
            route.continue_()
            return
        answered.append(route.request.url)
        route.fulfill(
            status=503,
            headers={"Retry-After": "1", "Content-Type": "application/json"},
            body=json.dumps({"error": {"code": "unavailable", "message": "the server is restarting"}}),
        )

    face = re.compile(r"/api/images/[0-9a-f-]+/face$")
    page.route(face, busy_once)
    upload(page, f"{PORTRAITS}/grace_hopper.jpg")
    expect(page.locator("#face-caption")).to_contain_text("Face found")
    assert len(answered) == 1
    page.unroute(face)

    sent = []
    listener = lambda r: sent.append(r.url) if r.method == "POST" and r.url.endswith("/api/images") else None
    page.on("request", listener)
    # Over the server's 20 MB (its /api/config says so).
    big = {"name": "big.png", "mimeType": "image/png", "buffer": b"\x89PNG\r\n\x1a\n" + bytes(21_000_000)}
    page.get_by_label("Photo", exact=True).set_input_files(big)
    expect(page.get_by_role("alert")).to_contain_text("too large")
    page.remove_listener("request", listener)
    assert not sent, "the photo was sent"


def late_answers(page):
    """An answer for a photo let go meanwhile does not land on the next one, and photos
    changed faster than faces are found ask for one face at a time: the first photo's face
    detection is held back while a second and a third photo show; nothing more is asked for
    until it is answered (no face), then only the third photo's face, which is found, and
    nothing says it has none."""
    held, face = hold_first_face(page)
    asked = []

    def ask(request):
        if face.search(request.url):
            asked.append(request.url)

    page.on("request", ask)

    def uploaded(path):
        with page.expect_response(
            lambda r: r.url.endswith("/api/images") and r.request.method == "POST"
        ) as up:
            upload(page, path)
        return up.value.json()["id"]

    first = uploaded(f"{PORTRAITS}/no_face_coffee.png")
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the first photo's face detection was asked for"
    expect(page.locator("#face-caption")).to_contain_text("Finding the face")
    # Two more photos while the first one's face is still being found.
    uploaded(f"{PORTRAITS}/astronaut.png")
    third = uploaded(f"{PORTRAITS}/grace_hopper.jpg")
    page.wait_for_timeout(500)
    assert len(asked) == 1, f"one face detection at a time: {asked}"
    expect(page.locator("#face-caption")).to_contain_text("Finding the face")
    with page.expect_response(lambda r: third in r.url and r.url.endswith("/face")):
        with page.expect_response(lambda r: first in r.url and r.url.endswith("/face")):
            held[0].continue_()
    page.unroute(face)
    assert len(asked) == 2 and third in asked[1], f"only the latest photo's face next: {asked}"
    # The first photo's late "no face" does not land on the third.
    expect(page.locator("#face-caption")).to_contain_text("Face found")
    expect(page.locator("#face-box")).to_be_visible()
    expect(page.locator("#generate-hint")).not_to_contain_text("No face")
    page.remove_listener("request", ask)


def late_preview(page):
    """A preview asked for just before another photo is opened is cancelled when its answer
    arrives, not shown over the new photo (whose patient it is not)."""
    held = []

    def hold(route):
        if route.request.method == "POST" and not held:
            held.append(route)
        else:
            route.continue_()

    upload(page, f"{PORTRAITS}/grace_hopper.jpg")
    expect(page.locator("#face-caption")).to_contain_text("Face found")
    page.get_by_role("checkbox", name=re.compile("^Rhinoplasty")).check()
    expect(page.locator("#generate")).to_be_enabled()
    viz = re.compile(r"/api/visualizations(/compare)?\?")
    page.route(viz, hold)
    page.locator("#generate").click()
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the preview was asked for"
    upload(page, f"{PORTRAITS}/astronaut.png")
    expect(page.locator("#face-caption")).to_contain_text("Face found")
    with page.expect_request(lambda r: r.url.endswith("/cancel"), timeout=15_000):
        held[0].continue_()
    page.unroute(viz)
    expect(page.locator("#progress-box")).to_be_hidden()
    expect(page.locator("#result")).to_be_hidden()
    page.get_by_role("checkbox", name=re.compile("^Rhinoplasty")).uncheck()


def cancel_waiting(page):
    """On an API host without workers the task waits; a lost connection is retried until
    Afterview answers again, then the task is followed as before; Cancel revokes it."""
    sign_in(page, ALICE, BASE_IDLE)
    # The task's WebSockets pass through the test, which can cut them as a network would.
    sockets = []

    def route(ws):
        ws.connect_to_server()
        sockets.append(ws)

    page.route_web_socket(re.compile(r"/api/ws/tasks/"), route)
    upload(page, f"{PORTRAITS}/grace_hopper.jpg")
    page.get_by_role("checkbox", name=re.compile("^Facelift")).check()
    page.get_by_role("button", name="Generate preview").click()
    expect(page.get_by_role("progressbar")).to_be_visible()
    expect(page.locator("#progress-label")).to_contain_text(re.compile("waiting", re.I))
    page.context.set_offline(True)
    sockets[-1].close()
    expect(page.locator("#progress-label")).to_contain_text("Reconnecting")
    page.context.set_offline(False)
    expect(page.locator("#progress-label")).not_to_contain_text("Reconnecting", timeout=15_000)
    expect(page.get_by_role("button", name="Cancel")).to_be_enabled()
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("alert")).to_contain_text("cancelled")
    expect(page.get_by_role("progressbar")).to_be_hidden()


def monitor(page, size):
    sign_in(page, ALICE)
    page.get_by_role("link", name="Monitor").click()
    expect(page.get_by_role("heading", name="Monitor")).to_be_visible()
    expect(page.locator("#m-queues tbody tr", has_text="visualizations")).to_have_count(1)
    expect(page.locator("#m-workers li").first).to_contain_text("@")
    expect(page.locator("#m-tasks tbody tr").first).to_be_visible()
    expect(page.locator("#m-tasks tbody")).to_contain_text("alice")
    shot(page, "monitor", size, full=True)

    # Revoke a waiting task (on the host without workers, where tasks wait).
    r = page.request.post(
        BASE_IDLE + "/api/visualizations/compare?async_processing=true",
        headers={"Authorization": f"Bearer {BOB}"},
        data={"image_id": "00000000-0000-4000-8000-000000000000", "procedure_ids": ["facelift", "rhinoplasty"]},
    )
    assert r.status == 404, "an unknown photo is refused before any task"
    up = page.request.post(
        BASE_IDLE + "/api/images",
        headers={"Authorization": f"Bearer {BOB}"},
        multipart={"file": {"name": "b.jpg", "mimeType": "image/jpeg", "buffer": open(f"{PORTRAITS}/grace_hopper.jpg", "rb").read()}},
    )
    image = up.json()["id"]
    r = page.request.post(
        BASE_IDLE + "/api/visualizations?async_processing=true",
        headers={"Authorization": f"Bearer {BOB}"},
        data={"image_id": image, "procedure_id": "facelift"},
    )
    task = r.json()["task_id"]
    sign_in(page, ALICE, BASE_IDLE)
    page.goto(BASE_IDLE + "/monitor")
    row = page.locator("#m-tasks tbody tr", has_text=task[-8:])
    expect(row).to_contain_text("PENDING")
    row.get_by_role("button", name=re.compile("^Revoke")).click()
    expect(page.get_by_role("alert")).to_contain_text("revoked")
    expect(row).to_contain_text("REVOKED")

    # A sign-in link with a token that is not (or no longer) valid says so.
    page.get_by_role("button", name="Sign out").click()
    page.goto("about:blank")
    page.goto(BASE + "/#token=not-a-valid-token-0123456789")
    expect(page.get_by_role("alert")).to_contain_text("invalid or has expired")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()

    # Bob is no operator: the monitor does not exist for him.
    sign_in(page, BOB)
    expect(page.get_by_role("link", name="Monitor")).to_be_hidden()
    page.goto(BASE + "/monitor")
    expect(page.get_by_role("alert")).to_contain_text("operators only")
    r = page.request.get(BASE + "/api/monitor", headers={"Authorization": f"Bearer {BOB}"})
    assert r.status == 404, r.status


def face_found_elsewhere(page):
    """A face found while another view shows is marked over the photo when the consultation
    shows again (measured while hidden, the photo had no size)."""
    held, face = hold_first_face(page)
    upload(page, f"{PORTRAITS}/grace_hopper.jpg")
    for _ in range(200):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the face was asked for"
    page.get_by_role("link", name="History").click()
    expect(page.get_by_role("heading", name="History")).to_be_visible()
    with page.expect_response(lambda r: r.url.endswith("/face")):
        held[0].continue_()
    page.unroute(face)
    page.wait_for_timeout(200)
    page.get_by_role("link", name="Consultation").click()
    expect(page.locator("#face-caption")).to_contain_text("Face found")
    box = page.locator("#face-box").bounding_box()
    photo = page.locator("#photo-img").bounding_box()
    assert box and box["width"] > photo["width"] * 0.1, f"the face box {box} over the photo {photo}"


def one_click_one_task(page):
    """A double click on Generate, or a second tap while the request is on its way, sends one
    preview: the button waits for the answer (on a host without workers: the task waits)."""
    sign_in(page, ALICE, BASE_IDLE)
    upload(page, f"{PORTRAITS}/grace_hopper.jpg")
    page.get_by_role("checkbox", name=re.compile("^Facelift")).check()
    viz = re.compile(r"/api/visualizations(/compare)?\?")
    double_click_posts_once(page, viz, page.locator("#generate"), "previews")
    expect(page.get_by_role("progressbar")).to_be_visible()
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_role("alert")).to_contain_text("cancelled")


def switching_users(page):
    """Signing out empties what the person before saw: the next one, at the same screen, sees
    neither the operator's monitor nor their choices (the intensity is the default again)."""
    sign_in(page, ALICE)
    page.get_by_label("Intensity").select_option("subtle")
    page.get_by_role("link", name="Monitor").click()
    expect(page.locator("#m-tasks tbody")).to_contain_text("alice")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Access token").fill(BOB)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("operators only")
    expect(page.locator("#m-tasks tbody tr")).to_have_count(0)
    expect(page.locator("#m-workers li")).to_have_count(0)
    expect(page.get_by_label("Intensity")).to_have_value("moderate")
    # History shows Bob's lists only: none of Alice's photos stay while his load.
    page.get_by_role("link", name="History").click()
    expect(page.locator("#h-images")).to_contain_text("Nothing yet")


# What the page loads from gstatic for Google's sign-in, faked: a user the SDK restored after
# a reload, whose fresh ID token is ALICE's (a static token the server accepts).
FAKE_FIREBASE = """window.firebase = (() => {
  const user = { uid: %s, getIdToken: async () => %s };
  const auth = {
    currentUser: user,
    onAuthStateChanged(cb) { setTimeout(() => cb(user), 50); return () => {}; },
    onIdTokenChanged(cb) { window.fakeIdTokenChanged = cb; return () => {}; },
    signOut: async () => { window.fakeSignOuts = (window.fakeSignOuts || 0) + 1; },
  };
  const authFn = () => auth;
  authFn.GoogleAuthProvider = function () {};
  return { apps: [], initializeApp(c) { this.apps.push(c); }, auth: authFn };
})();"""


def google_session_resumed(page):
    """After a reload, a session begun with Google's sign-in refreshes its token through the
    SDK (loaded again) instead of sending the stored one until it expires."""
    # A server with Firebase configured: its config, and its page's policy allowing the SDK.
    page.route(re.compile(r"/api/config$"), lambda r: r.fulfill(json={"firebase": {"apiKey": "k", "projectId": "p"}}))

    def firebase_policy(route):
        r = route.fetch()
        headers = dict(r.headers)
        headers["content-security-policy"] = headers["content-security-policy"].replace(
            "script-src 'self'", "script-src 'self' https://www.gstatic.com")
        route.fulfill(response=r, headers=headers)

    page.route(BASE + "/", firebase_policy)
    # The browser's Google user (Firebase's stored sign-in, shared by its tabs).
    google = {"uid": "alice-uid", "token": ALICE}
    page.route(re.compile(r"^https://www\.gstatic\.com/firebasejs/.*app-compat\.js$"),
               lambda r: r.fulfill(body=FAKE_FIREBASE % (repr(google["uid"]), repr(google["token"])),
                                   content_type="text/javascript"))
    page.route(re.compile(r"^https://www\.gstatic\.com/firebasejs/.*auth-compat\.js$"),
               lambda r: r.fulfill(body="", content_type="text/javascript"))
    page.goto(BASE + "/")
    # The token stored by the sign-in an hour ago: expired now.
    page.evaluate("sessionStorage.setItem('afterview.token', 'expired-google-id-token-0123456789');"
                  "sessionStorage.setItem('afterview.via', 'google');"
                  "sessionStorage.setItem('afterview.uid', 'alice-uid')")
    page.reload()
    expect(page.get_by_role("heading", name="Consultation")).to_be_visible()
    kept = page.evaluate("sessionStorage.getItem('afterview.token')")
    assert kept == ALICE, f"the fresh token is kept: {kept!r}"
    # Another Google user signs in in another tab of this browser: this tab's session ends
    # rather than carry on as them.
    page.evaluate("window.fakeIdTokenChanged({uid: 'bob-uid', getIdToken: async () => 'bobs-google-id-token-0123456789'})")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("another Google user")
    assert page.evaluate("sessionStorage.getItem('afterview.token')") is None
    # Alice's session reloaded after Bob signed in with Google in another tab: it ends, with
    # nothing sent without a token, and Bob stays signed in to Google.
    google.update(uid="bob-uid", token=BOB)
    page.evaluate("sessionStorage.setItem('afterview.token', 'expired-google-id-token-0123456789');"
                  "sessionStorage.setItem('afterview.via', 'google');"
                  "sessionStorage.setItem('afterview.uid', 'alice-uid')")
    page.reload()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("another Google user")
    page.wait_for_timeout(500)
    assert page.evaluate("window.fakeSignOuts || 0") == 0, "Bob's Google sign-in is left alone"
    expect(page.get_by_role("alert")).to_contain_text("another Google user")
    # A session begun with an access token stays that token's after a reload, whatever Google
    # user the browser keeps (a shared clinic computer): Bob is not made Alice.
    page.get_by_label("Access token").fill(BOB)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", name="Consultation")).to_be_visible()
    page.reload()
    expect(page.get_by_role("heading", name="Consultation")).to_be_visible()
    page.wait_for_timeout(500)
    kept = page.evaluate("sessionStorage.getItem('afterview.token')")
    assert kept == BOB, f"the access token is kept: {kept!r}"
    expect(page.get_by_role("link", name="Monitor")).to_be_hidden()
    page.unroute_all()


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for size, opts in SIZES.items():
            errors = []
            ctx = browser.new_context(accept_downloads=True, **opts)
            page = ctx.new_page()
            page.set_default_timeout(TIMEOUT)
            watch(page, errors)
            consultation(page, size)
            if size == "desktop":
                history(page, size)
                late_result_pictures(page)
                one_report_per_click(page)
                delete_photo(page)
                late_answers(page)
                busy_server_is_asked_again(page)
                late_preview(page)
                cancel_waiting(page)
                one_click_one_task(page)
                monitor(page, size)
                sign_in(page, ALICE)
                face_found_elsewhere(page)
                switching_users(page)
                google_session_resumed(page)
            else:
                page.get_by_role("link", name="History").click()
                expect(page.get_by_role("heading", name="History")).to_be_visible()
                shot(page, "history", size, full=True)
                monitor_page = page
                monitor_page.get_by_role("link", name="Monitor").click()
                expect(page.locator("#m-tasks tbody tr").first).to_be_visible()
                shot(page, "monitor", size, full=True)
            ctx.close()
            if errors:
                print(f"{size}: errors in the page:\n" + "\n".join(errors), file=sys.stderr)
                sys.exit(1)
            print(f"{size}: ok")
        browser.close()


if __name__ == "__main__":
    main()
