"""Drives BeamLens's LiveDashboard page in headless Chromium (Playwright).

Run by test/host_app/test/host_app/dashboard_hosttest.exs, which starts the
app and talks to this script over stdin/stdout, one line each way:

  -> READY      the LiveView connected and shows every watcher
  <- FAULT      the test injected a fault
  -> DONE {...} its alert showed up live, its detail opened, an
                investigation ran, a watcher was paused; the screenshots
                and the HTML are saved
  -> FAILED ... anything else (a screenshot is saved all the same)
"""
import argparse
import json
import os
import sys

from playwright.sync_api import sync_playwright


def say(line):
    print(line, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--chromium", required=True)
    ap.add_argument("--watchers", required=True)
    ap.add_argument("--anomaly", required=True)
    ap.add_argument("--pause", required=True, help="a watcher to pause from the page")
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--html", required=True)
    ap.add_argument("--top", required=True, help="a screenshot of the first screen, for the README")
    ap.add_argument("--timeout", type=int, default=90_000)
    a = ap.parse_args()

    # Chromium's sandbox needs user namespaces, which root in a container lacks.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=a.chromium, headless=True, args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(a.timeout)
        try:
            page.goto(a.url)
            # LiveView marks its root once the websocket joined.
            page.wait_for_selector("[data-phx-main].phx-connected")
            # LiveDashboard's own refresh selector: every 2 s instead of 15.
            page.select_option("#refresh-interval-select", "2")
            for name in a.watchers.split(","):
                page.wait_for_selector(f"#beamlens-watcher-{name}")
            say("READY")

            if sys.stdin.readline().strip() != "FAULT":
                raise RuntimeError("expected FAULT from the test")

            row = page.wait_for_selector(f'tr[data-anomaly-type="{a.anomaly}"]')
            summary = row.inner_text()
            row.click()
            detail = page.wait_for_selector("#beamlens-alert-detail").inner_text()

            page.fill("#beamlens-investigate input[name=question]", "Why are orders crashing?")
            page.click("#beamlens-investigate button[type=submit]")
            report = page.wait_for_selector("#beamlens-report").inner_text()

            # The summary, the watchers and the alerts (for the README).
            page.screenshot(path=a.top, full_page=True,
                            clip={"x": 0, "y": 0, "width": 1280, "height": 1240})
            page.click(f"#beamlens-watcher-{a.pause} button:has-text('Pause')")
            page.wait_for_selector(f"#beamlens-watcher-{a.pause} button:has-text('Resume')")

            states = {
                el.get_attribute("data-watcher"): el.get_attribute("data-state")
                for el in page.query_selector_all("tr[data-watcher]")
            }
            page.screenshot(path=a.screenshot, full_page=True)
            with open(a.html, "w") as f:
                f.write(page.content())
            say("DONE " + json.dumps(
                {"states": states, "alert": summary, "detail": detail, "report": report}))
        except Exception as e:
            page.screenshot(path=a.screenshot, full_page=True)
            with open(a.html, "w") as f:
                f.write(page.content())
            say("FAILED " + " ".join(str(e).split()))
            sys.exit(1)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
