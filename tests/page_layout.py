"""The tablet page's layout, as a clinician sees it: checked in the browser, in the state the
page is in, at 1280x800 (landscape) and at 800x1280 (portrait) of a 10-inch tablet.

In each orientation every shown control (buttons, the E-STOP, inputs, selects) is wholly on
screen, not cut off by a panel that scrolls, not under the E-STOP or anything else, its own
text not cut; the page itself does not scroll; and the state, the hands and the remaining time
are 40 px or more, whole (``scrollWidth <= clientWidth``) and in view.
"""

from __future__ import annotations

from playwright.async_api import Page, ViewportSize

from tests.browser import SCREENSHOTS

LANDSCAPE: ViewportSize = {"width": 1280, "height": 800}
PORTRAIT: ViewportSize = {"width": 800, "height": 1280}
ORIENTATIONS = (("landscape", LANDSCAPE), ("portrait", PORTRAIT))
READ_FROM_AFAR_PX = 40.0  # the state, the hands and the remaining time, read from two metres
READ_FROM_AFAR = ("#state .words", "#grip-left .words", "#grip-right .words", "#remaining")

# One pass over the page: a list of what is wrong, in words (empty: all is well).
_PROBLEMS_JS = """([afar, minPx]) => {
  const problems = [];
  const vw = document.documentElement.clientWidth, vh = document.documentElement.clientHeight;
  const slack = 0.5;
  const name = (el) => (el.id ? "#" + el.id : el.tagName.toLowerCase());
  const inside = (r, b) =>
    r.left >= b.left - slack && r.top >= b.top - slack &&
    r.right <= b.right + slack && r.bottom <= b.bottom + slack;
  const overlap = (a, b) =>
    a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
  // On screen, and not cut off by a box that clips its content (a panel that scrolls).
  const inView = (el, what) => {
    const r = el.getBoundingClientRect();
    if (!inside(r, { left: 0, top: 0, right: vw, bottom: vh })) {
      problems.push(`${what} is off screen`);
      return;
    }
    for (let box = el.parentElement; box; box = box.parentElement) {
      const cs = getComputedStyle(box);
      if (cs.overflowX === "visible" && cs.overflowY === "visible") continue;
      if (!inside(r, box.getBoundingClientRect())) {
        problems.push(`${what} is cut off by ${name(box)}`);
        return;
      }
    }
  };
  const estop = document.getElementById("estop");
  const estopBox = estop.getBoundingClientRect();
  const controls = [...document.querySelectorAll("button, input, select")].filter(
    (el) => !el.closest("dialog") && el.checkVisibility(),
  );
  if (!controls.includes(estop)) problems.push("the E-STOP is not shown");
  for (const el of controls) {
    const what = name(el);
    inView(el, what);
    if (el.scrollWidth > el.clientWidth + 1 || el.scrollHeight > el.clientHeight + 1) {
      problems.push(`${what}: its text does not fit`);
    }
    const r = el.getBoundingClientRect();
    if (el !== estop && overlap(r, estopBox)) problems.push(`${what} lies under the E-STOP`);
    const hit = document.elementFromPoint((r.left + r.right) / 2, (r.top + r.bottom) / 2);
    if (!(hit === el || el.contains(hit))) {
      problems.push(`${what} is covered by ${hit ? name(hit) : "nothing on screen"}`);
    }
  }
  const root = document.documentElement;
  if (root.scrollWidth > vw || root.scrollHeight > vh) {
    problems.push(`the page scrolls (${root.scrollWidth}x${root.scrollHeight})`);
  }
  for (const selector of afar) {
    const el = document.querySelector(selector);
    const px = parseFloat(getComputedStyle(el).fontSize);
    if (!(px >= minPx)) problems.push(`${selector} is ${px} px`);
    if (el.clientWidth === 0 || el.scrollWidth > el.clientWidth) {
      problems.push(`${selector} is clipped (${el.scrollWidth} > ${el.clientWidth})`);
    }
    inView(el, selector);
  }
  return problems;
}"""


async def layout_problems(page: Page) -> list[str]:
    problems = await page.evaluate(_PROBLEMS_JS, [list(READ_FROM_AFAR), READ_FROM_AFAR_PX])
    assert isinstance(problems, list)
    return [str(p) for p in problems]


async def check_layout(page: Page, state: str, shots: str | None = None) -> None:
    """The page in its present state, in both orientations: fails naming every problem. It
    leaves the page in landscape. ``shots``: a screenshot of each orientation, so named, in
    build/screenshots/."""
    found: list[str] = []
    try:
        for orientation, size in ORIENTATIONS:
            await page.set_viewport_size(size)
            found += [f"{orientation}: {p}" for p in await layout_problems(page)]
            if shots is not None:
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                await page.screenshot(path=str(SCREENSHOTS / f"{shots}-{orientation}.png"))
    finally:
        await page.set_viewport_size(LANDSCAPE)
    assert not found, f"{state}: " + "; ".join(found)
