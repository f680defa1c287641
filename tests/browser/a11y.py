"""Accessibility basics, checked twice: axe-core (vendored from the npm registry, WCAG 2
A/AA rules, injected by conftest.py) and a small own check: every form control has an accessible name, images have alt
text, the page has a language and one h1, text contrast meets WCAG AA (4.5:1, 3:1 for large
text), and every interactive element is reachable with the keyboard in document order."""
from __future__ import annotations

CHECK = r"""
() => {
  const problems = [];
  const html = document.documentElement;
  if (!html.getAttribute("lang")) problems.push("html has no lang");
  if (document.querySelectorAll("h1").length !== 1) problems.push("page needs exactly one h1");
  if (!document.title.trim()) problems.push("page has no title");
  const named = (el) => {
    if (el.getAttribute("aria-label") || el.getAttribute("aria-labelledby")) return true;
    if (el.id && document.querySelector(`label[for="${CSS.escape(el.id)}"]`)) return true;
    if (el.closest("label")) return true;
    if (["submit", "button"].includes(el.type) && (el.value || el.textContent.trim())) return true;
    if (el.tagName === "BUTTON" && el.textContent.trim()) return true;
    return false;
  };
  for (const el of document.querySelectorAll("input:not([type=hidden]), select, textarea, button")) {
    if (!named(el)) problems.push(`unlabelled ${el.tagName.toLowerCase()} ${el.name || el.id || ""}`);
  }
  for (const a of document.querySelectorAll("a[href]")) {
    if (!a.textContent.trim() && !a.getAttribute("aria-label")) problems.push("link without text");
  }
  for (const img of document.querySelectorAll("img")) {
    if (!img.hasAttribute("alt")) problems.push("img without alt");
  }
  const rgb = (s) => { const m = s.match(/[\d.]+/g) || [0, 0, 0, 1]; return m.map(Number); };
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : Math.pow((c + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length < 4 || c[3] > 0) return c;
    }
    return [255, 255, 255];
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  while (walker.nextNode()) {
    const el = walker.currentNode.parentElement;
    if (!walker.currentNode.textContent.trim() || seen.has(el)) continue;
    seen.add(el);
    const st = getComputedStyle(el);
    if (st.visibility === "hidden" || st.display === "none" || el.getClientRects().length === 0) continue;
    const r = el.getBoundingClientRect();
    if (r.right < 0 || r.bottom < 0) continue;   // the off-screen skip link
    const l1 = lum(rgb(st.color)), l2 = lum(background(el));
    const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
    const size = parseFloat(st.fontSize), bold = parseInt(st.fontWeight) >= 700;
    const need = (size >= 24 || (bold && size >= 18.66)) ? 3 : 4.5;
    if (ratio < need) problems.push(`contrast ${ratio.toFixed(2)} < ${need}: "${el.textContent.trim().slice(0, 30)}"`);
  }
  return problems;
}
"""


AXE_RUN = """async () => {
  const r = await axe.run(document, {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa"]}});
  return r.violations.map(v => `${v.id} (${v.impact}): ${v.nodes.length} node(s): ${v.help}`);
}"""


def check_accessibility(page, *, max_tabs: int = 60) -> None:
    assert page.evaluate("() => typeof axe") == "object", "axe-core was not injected"
    violations = page.evaluate(AXE_RUN)
    assert violations == [], violations
    problems = page.evaluate(CHECK)
    assert problems == [], problems
    # keyboard: Tab reaches every visible control, and focus is visible on each
    focusable = page.evaluate("""() => {
        const els = [...document.querySelectorAll('a[href], button:not([disabled]), summary, ' +
            'input:not([type=hidden]):not([disabled]), select, textarea')]
            .filter(e => e.getClientRects().length && getComputedStyle(e).visibility !== 'hidden')
            .filter(e => !(e.closest('details:not([open])') && e.tagName !== 'SUMMARY'));
        els.forEach((e, i) => e.setAttribute('data-a11y-i', String(i)));
        return els.length; }""")
    page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.focus(); }")
    reached = set()
    for _ in range(min(max_tabs, focusable + 3)):
        page.keyboard.press("Tab")
        info = page.evaluate("""() => { const e = document.activeElement;
            if (!e || e === document.body) return null;
            const s = getComputedStyle(e);
            return [e.getAttribute('data-a11y-i') || e.outerHTML.slice(0, 60),
                    s.outlineStyle !== 'none' || s.boxShadow !== 'none'] }""")
        if info:
            reached.add(info[0])
            assert info[1], f"no visible focus on control {info[0]}"
    missing = focusable - len(reached & {str(i) for i in range(focusable)})
    assert missing == 0, (f"keyboard did not reach {missing} of {focusable} controls", sorted(reached), page.evaluate("() => [...document.querySelectorAll('[data-a11y-i]')].map(e => e.outerHTML.slice(0, 70))"))
