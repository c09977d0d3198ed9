// A small markdown renderer for the chat page: plain JavaScript, no dependencies, no build step.
// The source is HTML-escaped first, so the only tags in the output are the ones made here; links go only to
// http(s) and mailto addresses. Blocks: fenced code, headings, rules, quotes, nested lists, paragraphs;
// tables; inline: code spans, links, bold, italic, strikethrough.
"use strict";

// window.tokenmillMarkdown.render(text) -> HTML (chat.js uses it; the tests call it directly)
window.tokenmillMarkdown = (() => {
  const HOLE = "\u0000";  // marks a finished inline piece (code span, link) kept away from later rules

  function escapeHtml(text) {
    return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
      .replace(/"/g, "&quot;").replace(/'/g, "&#39;");
  }

  // links only to the web or mail: a javascript: or data: address stays plain text
  const SAFE_URL = /^(https?:\/\/|mailto:)[^\s]*$/i;

  function emphasis(text) {
    return text
      .replace(/\*\*([^\s*](?:[\s\S]*?[^\s*])?)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^\w])__([^\s_](?:[\s\S]*?[^\s_])?)__(?!\w)/g, "$1<strong>$2</strong>")
      .replace(/~~([^\s~](?:[\s\S]*?[^\s~])?)~~/g, "<del>$1</del>")
      .replace(/\*([^\s*](?:[^*]*?[^\s*])?)\*/g, "<em>$1</em>")
      .replace(/(^|[^\w])_([^\s_](?:[^_]*?[^\s_])?)_(?!\w)/g, "$1<em>$2</em>");
  }

  // `escaped` is already HTML-escaped text of one block
  function inline(escaped) {
    const pieces = [];
    const keep = (html) => { pieces.push(html); return HOLE + (pieces.length - 1) + HOLE; };
    const codeSpan = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g;
    let text = escaped.replace(codeSpan, (_, ticks, code) => keep(`<code>${code.trim()}</code>`));
    text = text.replace(/\[([^\]\n]+)\]\(([^()\s]+)\)/g, (whole, label, url) => {
      // the address was escaped with the rest; undo &amp; only to test its scheme, never in the output
      if (!SAFE_URL.test(url.replace(/&amp;/g, "&"))) return whole;
      return keep(`<a href="${url}" target="_blank" rel="noopener noreferrer">${emphasis(label)}</a>`);
    });
    text = emphasis(text);
    return text.replace(new RegExp(HOLE + "(\\d+)" + HOLE, "g"), (_, index) => pieces[Number(index)]);
  }

  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
  const QUOTE = /^ {0,3}&gt;\s?(.*)$/;
  const ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;

  // a table: a header row, a rule row of dashes with at least one pipe, then rows while lines hold a pipe
  const TABLE_RULE = /^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$/;

  function startsTable(lines, i) {
    const rule = lines[i + 1];
    return lines[i].includes("|") && rule !== undefined && rule.includes("|") && TABLE_RULE.test(rule);
  }

  // a row's cells: split at the pipes outside code spans
  function cells(line) {
    const parts = [""];
    let inCode = false;
    for (const character of line.trim().replace(/^\|/, "").replace(/\|$/, "")) {
      if (character === "`") inCode = !inCode;
      if (character === "|" && !inCode) parts.push("");
      else parts[parts.length - 1] += character;
    }
    return parts.map((cell) => inline(cell.trim()));
  }

  function table(lines, start) {
    const row = (tag, values) => `<tr>${values.map((value) => `<${tag}>${value}</${tag}>`).join("")}</tr>`;
    const rows = [];
    let i = start + 2;
    while (i < lines.length && lines[i].includes("|") && lines[i].trim() !== "") {
      rows.push(row("td", cells(lines[i])));
      i += 1;
    }
    return { html: `<table><thead>${row("th", cells(lines[start]))}</thead><tbody>${rows.join("")}</tbody></table>`,
      next: i };
  }

  function startsBlock(line) {
    return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
  }

  function fencedCode(lines, start) {
    const [, marker, language] = lines[start].match(FENCE);
    const body = [];
    let i = start + 1;
    // an unclosed fence (an answer still streaming) runs to the end
    while (i < lines.length && !(lines[i].trim().startsWith(marker) && lines[i].trim().replace(/[`~]/g, "") === "")) {
      body.push(lines[i]);
      i += 1;
    }
    const languageClass = language ? ` class="language-${language}"` : "";
    return { html: `<pre><code${languageClass}>${body.join("\n")}</code></pre>`, next: i + 1 };
  }

  // a list: its items and their indented continuation lines (deeper items become a nested list); a blank
  // line ends it unless an item or an indented line follows
  function list(lines, start) {
    const items = [];
    const baseIndent = lines[start].match(ITEM)[1].length;
    const isOrdered = (item) => /\d/.test(item[2]);
    const ordered = isOrdered(lines[start].match(ITEM));
    // an item of this list: not indented deeper, and of the same kind (a bullet after a number starts a new list)
    const sibling = (item) => item && item[1].length <= baseIndent + 1 && isOrdered(item) === ordered;
    const belongs = (line) => {
      const item = line.match(ITEM);
      return sibling(item) || (!(item && item[1].length <= baseIndent + 1) && line.search(/\S/) >= baseIndent + 2);
    };
    let i = start;
    while (i < lines.length) {
      const line = lines[i];
      const item = line.match(ITEM);
      if (item && item[1].length <= baseIndent + 1 && !sibling(item)) {
        break;
      } else if (sibling(item)) {
        items.push({ marker: item[2], lines: [item[3]] });
      } else if (line.trim() === "") {
        let next = i + 1;
        while (next < lines.length && lines[next].trim() === "") next += 1;
        if (next >= lines.length || !belongs(lines[next])) break;
        items[items.length - 1].lines.push("");
      } else if (item || /^\s+/.test(line)) {
        items[items.length - 1].lines.push(line.slice(Math.min(baseIndent + 2, line.search(/\S/))));
      } else {
        break;
      }
      i += 1;
    }
    const first = parseInt(items[0].marker, 10);
    const startAttribute = ordered && first !== 1 ? ` start="${first}"` : "";
    const tag = ordered ? "ol" : "ul";
    const body = items.map((item) => `<li>${blocks(item.lines, true)}</li>`).join("");
    return { html: `<${tag}${startAttribute}>${body}</${tag}>`, next: i };
  }

  function blocks(lines, tight) {
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      if (line.trim() === "") { i += 1; continue; }
      let match;
      if (FENCE.test(line)) {
        const code = fencedCode(lines, i);
        out.push(code.html);
        i = code.next;
      } else if ((match = line.match(HEADING))) {
        out.push(`<h${match[1].length}>${inline(match[2])}</h${match[1].length}>`);
        i += 1;
      } else if (RULE.test(line)) {
        out.push("<hr>");
        i += 1;
      } else if (QUOTE.test(line)) {
        const quoted = [];
        while (i < lines.length && (match = lines[i].match(QUOTE))) { quoted.push(match[1]); i += 1; }
        out.push(`<blockquote>${blocks(quoted, false)}</blockquote>`);
      } else if (ITEM.test(line)) {
        const items = list(lines, i);
        out.push(items.html);
        i = items.next;
      } else if (startsTable(lines, i)) {
        const rows = table(lines, i);
        out.push(rows.html);
        i = rows.next;
      } else {
        const paragraph = [line];
        i += 1;
        while (i < lines.length && lines[i].trim() !== "" && !startsBlock(lines[i]) && !startsTable(lines, i)) {
          paragraph.push(lines[i]);
          i += 1;
        }
        const text = paragraph.map((l) => inline(l.trim())).join("<br>");
        out.push(tight && out.length === 0 ? text : `<p>${text}</p>`);
      }
    }
    return out.join("");
  }

  function render(source) {
    const escaped = escapeHtml(String(source).replace(/\u0000/g, "\uFFFD").replace(/\r\n?/g, "\n"));
    return blocks(escaped.split("\n"), false);
  }

  return { render, escapeHtml };
})();
