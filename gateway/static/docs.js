// tongban API docs: renders openapi.json (same origin) into the page. Plain DOM and no
// dependencies; strings from the document are only ever inserted as text nodes.
"use strict";

(function () {
  const METHODS = ["get", "put", "post", "delete", "patch", "head", "options"];
  let spec = null;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // `code` spans are the only inline markup the document uses.
  function inline(text) {
    const out = document.createDocumentFragment();
    for (const part of String(text || "").split(/(`[^`]+`)/)) {
      if (part.length > 2 && part[0] === "`" && part[part.length - 1] === "`") {
        out.append(el("code", null, part.slice(1, -1)));
      } else if (part) {
        out.append(document.createTextNode(part));
      }
    }
    return out;
  }

  function paragraphs(text) {
    const box = el("div", { class: "desc" });
    for (const para of String(text || "").split(/\n\s*\n/)) {
      if (para.trim()) box.append(el("p", null, inline(para.replace(/\s*\n\s*/g, " "))));
    }
    return box;
  }

  function refName(ref) {
    return String(ref).split("/").pop();
  }

  function resolve(schema) {
    if (schema && schema.$ref && spec.components && spec.components.schemas) {
      return spec.components.schemas[refName(schema.$ref)] || schema;
    }
    return schema;
  }

  function schemaLink(ref) {
    const name = refName(ref);
    return el("a", { href: "#schema-" + name, class: "mono" }, name);
  }

  function problemSlug(uri) {
    return String(uri).split("/").pop();
  }

  function problemLink(uri) {
    const slug = problemSlug(uri);
    return el("a", { href: "#problem-" + slug, class: "pill mono", title: uri }, slug);
  }

  // A one-line description of a schema's type: a link, "array of X", "string | null".
  function typeLabel(schema) {
    if (!schema) return el("span", { class: "muted" }, "any");
    if (schema.$ref) return schemaLink(schema.$ref);
    if (schema.const !== undefined) return el("code", null, JSON.stringify(schema.const));
    if (schema.type === "array") return el("span", null, "array of ", typeLabel(schema.items));
    if (Array.isArray(schema.type)) return el("span", { class: "mono" }, schema.type.join(" | "));
    if (schema.type) return el("span", { class: "mono" }, schema.type);
    if (schema.allOf) return el("span", null, schema.allOf.map((s, i) => [i ? " & " : "", typeLabel(s)]));
    if (schema.oneOf || schema.anyOf) {
      const parts = schema.oneOf || schema.anyOf;
      return el("span", null, parts.map((s, i) => [i ? " | " : "", typeLabel(s)]));
    }
    return el("span", { class: "muted" }, "any");
  }

  function constraints(schema) {
    const out = [];
    const add = (label, value) => out.push(el("span", { class: "constraint" }, label, " ", el("code", null, value)));
    if (!schema) return out;
    if (schema.format) add("format", schema.format);
    if (schema.pattern) add("pattern", schema.pattern);
    for (const key of ["minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems"]) {
      if (schema[key] !== undefined) add(key, String(schema[key]));
    }
    if (schema.uniqueItems) add("uniqueItems", "true");
    if (schema.default !== undefined) add("default", JSON.stringify(schema.default));
    if (schema.propertyNames && schema.propertyNames.$ref) {
      out.push(el("span", { class: "constraint" }, "keys: ", schemaLink(schema.propertyNames.$ref)));
    }
    const items = schema.type === "array" ? schema.items || {} : {};
    if (Array.isArray(schema.prefixItems)) {
      out.push(el("span", { class: "constraint" }, "first item: ", schema.prefixItems.map((s) => enumPills(s) || typeLabel(s))));
    }
    for (const s of [items]) {
      if (s.pattern) add("items pattern", s.pattern);
    }
    return out;
  }

  function enumPills(schema) {
    const values = schema && (schema.enum || (schema.items && schema.items.enum));
    if (!values) return null;
    return el("span", { class: "enum" }, values.map((v) => el("span", { class: "pill mono" }, String(v))));
  }

  function describeCell(schema) {
    const cell = el("td");
    if (schema && schema.description) cell.append(el("div", null, inline(schema.description)));
    const pills = enumPills(schema);
    if (pills) cell.append(pills);
    const cons = constraints(schema);
    if (cons.length) cell.append(el("div", null, cons.map((c, i) => [i ? " · " : "", c])));
    return cell;
  }

  // if/then rules, as the check requests use them: "when claim = X, params must be ...".
  function conditionalRules(rules) {
    const list = el("ul");
    for (const rule of rules) {
      const when = rule.if && rule.if.properties;
      const then = rule.then && rule.then.properties;
      if (!when || !then) continue;
      const [field, cond] = Object.entries(when)[0];
      const parts = Object.entries(then).map(([name, s]) => {
        const props = Object.entries(s.properties || {});
        if (!props.length) return [el("code", null, name), " must be empty"];
        return [el("code", null, name), " takes ", props.map(([p, ps], i) => [i ? ", " : "", el("code", null, p), " ∈ ", enumPills(ps)])];
      });
      list.append(el("li", null, "when ", el("code", null, field), " = ", el("code", null, JSON.stringify(cond.const)), ": ", parts));
    }
    return list.children.length ? el("div", null, el("h4", null, "Per-claim parameters 参数约束"), list) : null;
  }

  function propertiesTable(schema, depth) {
    const required = new Set(schema.required || []);
    const rows = Object.entries(schema.properties || {}).map(([name, prop]) =>
      el("tr", null,
        el("td", { class: "name mono" }, name, required.has(name) ? el("span", { class: "req", title: "required" }, " *") : null),
        el("td", null, typeLabel(prop), nested(prop, depth)),
        describeCell(prop)));
    if (schema.additionalProperties && typeof schema.additionalProperties === "object") {
      const extra = schema.additionalProperties;
      rows.push(el("tr", null, el("td", { class: "name muted" }, "(any key)"),
        el("td", null, typeLabel(extra), nested(extra, depth)), describeCell(extra)));
    }
    if (!rows.length) return null;
    return el("table", null,
      el("thead", null, el("tr", null, el("th", null, "field 字段"), el("th", null, "type 类型"), el("th", null, "notes 说明"))),
      el("tbody", null, rows));
  }

  // Inline objects (not $ref'd) are shown in place, a couple of levels deep.
  function nested(schema, depth) {
    if (!schema || schema.$ref || depth > 2) return null;
    const inner = schema.type === "array" ? schema.items : schema;
    if (inner && !inner.$ref && inner.properties) return schemaBlock(inner, depth + 1);
    return null;
  }

  function schemaBlock(schema, depth) {
    depth = depth || 0;
    const box = el("div", { class: "schema" });
    if (!schema) return box;
    if (schema.$ref) {
      box.append("→ ", schemaLink(schema.$ref));
      return box;
    }
    if (depth === 0 && schema.description) box.append(paragraphs(schema.description));
    if (schema.allOf && !schema.properties) {
      const problem = problemTypesOf(schema);
      if (problem) {
        box.append(schemaLink(problem.ref), " with ", el("code", null, "type"), " one of ", problem.types.map(problemLink));
        return box;
      }
    }
    if (schema.properties || (schema.additionalProperties && typeof schema.additionalProperties === "object")) {
      box.append(el("div", { class: "muted" },
        schema.additionalProperties === false ? "object, no other fields 不接受其他字段" : "object"));
      const table = propertiesTable(schema, depth);
      if (table) box.append(table);
    } else {
      box.append(el("div", null, typeLabel(schema)));
      const pills = enumPills(schema);
      if (pills) box.append(pills);
      const cons = constraints(schema);
      if (cons.length) box.append(el("div", null, cons.map((c, i) => [i ? " · " : "", c])));
    }
    if (Array.isArray(schema.allOf) && schema.properties) {
      const rules = conditionalRules(schema.allOf);
      if (rules) box.append(rules);
    }
    return box;
  }

  // A problem response's schema: allOf [Problem, {properties: {type: {enum: [...]}}}].
  function problemTypesOf(schema) {
    if (!schema || !Array.isArray(schema.allOf)) return null;
    const base = schema.allOf.find((s) => s.$ref);
    const narrowed = schema.allOf.find((s) => s.properties && s.properties.type && s.properties.type.enum);
    if (!base || !narrowed) return null;
    return { ref: base.$ref, types: narrowed.properties.type.enum };
  }

  function securityCell(requirements) {
    if (!requirements || !requirements.length) return el("span", { class: "muted" }, "none — public 公开");
    return requirements.map((req, i) => {
      const names = Object.keys(req);
      const text = names.length
        ? names.map((n) => [el("a", { href: "#security-" + n, class: "mono" }, n), req[n].length ? [" scopes: ", req[n].map((s) => el("span", { class: "pill mono" }, s))] : null])
        : el("span", { class: "muted" }, "credentials in the body");
      return [i ? el("span", { class: "muted" }, " or ") : null, text];
    });
  }

  function parametersTable(params) {
    if (!params.length) return null;
    return el("table", null,
      el("thead", null, el("tr", null, el("th", null, "name 名称"), el("th", null, "in"), el("th", null, "type 类型"), el("th", null, "notes 说明"))),
      el("tbody", null, params.map((p) => {
        const notes = describeCell(resolve(p.schema) === p.schema ? p.schema : Object.assign({}, resolve(p.schema), { description: undefined }));
        if (p.description) notes.prepend(el("div", null, inline(p.description)));
        return el("tr", null,
          el("td", { class: "name mono" }, p.name, p.required ? el("span", { class: "req", title: "required" }, " *") : null),
          el("td", null, p.in), el("td", null, typeLabel(p.schema)), notes);
      })));
  }

  function contentBlock(content) {
    const box = el("div");
    for (const [media, body] of Object.entries(content || {})) {
      box.append(el("div", null, el("span", { class: "pill mono" }, media), " ", body.schema && body.schema.$ref ? schemaLink(body.schema.$ref) : null));
      // A request body is what a reader needs in full: show the referenced schema in place.
      if (body.schema) box.append(schemaBlock(resolve(body.schema), 0));
    }
    return box;
  }

  function responsesTable(responses) {
    return el("table", null,
      el("thead", null, el("tr", null, el("th", null, "status 状态"), el("th", null, "meaning 含义"), el("th", null, "body 响应体"))),
      el("tbody", null, Object.entries(responses).map(([status, resp]) => {
        const body = el("td");
        for (const [media, c] of Object.entries(resp.content || {})) {
          const problem = problemTypesOf(c.schema);
          body.append(el("div", null, el("span", { class: "pill mono" }, media), " ",
            problem ? [schemaLink(problem.ref), el("div", null, problem.types.map(problemLink))] : typeLabel(c.schema)));
        }
        const headers = Object.keys(resp.headers || {}).filter((h) => h !== "X-Request-Id");
        if (headers.length) body.append(el("div", { class: "constraint" }, "headers: ", headers.join(", ")));
        const cls = "status s" + String(status)[0];
        const text = problemTypesOf(((Object.values(resp.content || {})[0]) || {}).schema)
          ? String(resp.description || "").split(":")[0] : resp.description;
        return el("tr", null, el("td", { class: cls }, status), el("td", null, inline(text)), body);
      })));
  }

  function operationCard(path, method, op, pathParams) {
    const id = "op-" + (op.operationId || method + path);
    const problems = [];
    for (const resp of Object.values(op.responses || {})) {
      for (const c of Object.values(resp.content || {})) {
        const p = problemTypesOf(c.schema);
        if (p) problems.push(...p.types.map(problemSlug));
      }
    }
    const search = [method, path, op.summary, op.operationId, (op.tags || []).join(" "), problems.join(" ")].join(" ").toLowerCase();
    const locked = op.security && op.security.length
      ? op.security.map((r) => Object.keys(r).join("+") || "body").join(" | ") : "public";
    const params = [...(pathParams || []), ...(op.parameters || [])];
    const body = el("div", { class: "body" },
      op.description ? paragraphs(op.description) : null,
      el("h4", null, "Security 认证"), el("div", null, securityCell(op.security)),
      params.length ? [el("h4", null, "Parameters 参数"), parametersTable(params)] : null,
      op.requestBody ? [el("h4", null, "Request body 请求体", op.requestBody.required ? el("span", { class: "req" }, " *") : null), contentBlock(op.requestBody.content)] : null,
      el("h4", null, "Responses 响应"), responsesTable(op.responses || {}));
    return el("details", { class: "op", id: id, "data-search": search },
      el("summary", null,
        el("span", { class: "method " + method }, method.toUpperCase()),
        el("span", { class: "path mono" }, path),
        el("span", { class: "summary" }, op.summary || ""),
        el("span", { class: "lock", title: "security" }, locked)),
      body);
  }

  function operationsByTag() {
    const groups = new Map((spec.tags || []).map((t) => [t.name, []]));
    for (const [path, item] of Object.entries(spec.paths || {})) {
      for (const method of METHODS) {
        const op = item[method];
        if (!op) continue;
        const tag = (op.tags && op.tags[0]) || "other";
        if (!groups.has(tag)) groups.set(tag, []);
        groups.get(tag).push({ path, method, op, pathParams: item.parameters || [] });
      }
    }
    return groups;
  }

  function renderOperations(nav) {
    const section = el("section", { id: "operations" }, el("h2", { class: "section" }, "Operations 接口"));
    const tagInfo = new Map((spec.tags || []).map((t) => [t.name, t]));
    nav.append(el("h2", null, "Operations 接口"));
    for (const [tag, ops] of operationsByTag()) {
      if (!ops.length) continue;
      const info = tagInfo.get(tag) || {};
      section.append(el("h3", { class: "tag", id: "tag-" + tag }, tag), info.description ? el("p", { class: "muted" }, info.description) : null);
      const list = el("ul");
      for (const { path, method, op, pathParams } of ops) {
        const card = operationCard(path, method, op, pathParams);
        section.append(card);
        list.append(el("li", { "data-for": card.id }, el("a", { href: "#" + card.id },
          el("span", { class: "mono" }, method.toUpperCase() + " "), path)));
      }
      nav.append(el("div", { class: "muted" }, tag), list);
    }
    return section;
  }

  function renderSecurity(nav) {
    const schemes = (spec.components && spec.components.securitySchemes) || {};
    const section = el("section", { id: "security" }, el("h2", { class: "section" }, "Security 认证方式"));
    for (const [name, scheme] of Object.entries(schemes)) {
      const rows = [];
      for (const [flowName, flow] of Object.entries(scheme.flows || {})) {
        rows.push(el("p", null, "Flow ", el("code", null, flowName), " · token URL ", el("code", null, flow.tokenUrl)));
        rows.push(el("table", null,
          el("thead", null, el("tr", null, el("th", null, "scope 权限"), el("th", null, "grants 用途"))),
          el("tbody", null, Object.entries(flow.scopes || {}).map(([s, d]) => el("tr", null, el("td", { class: "mono" }, s), el("td", null, d))))));
      }
      section.append(el("h3", { class: "tag", id: "security-" + name }, name, " ", el("span", { class: "pill mono" }, [scheme.type, scheme.scheme].filter(Boolean).join(" "))),
        scheme.description ? paragraphs(scheme.description) : null, rows);
    }
    nav.append(el("h2", null, el("a", { href: "#security" }, "Security 认证")));
    return section;
  }

  function renderProblems(nav) {
    const problems = spec["x-problem-types"] || [];
    const rows = problems.map((p) => el("tr", { id: "problem-" + p.slug, "data-search": (p.slug + " " + p.title).toLowerCase() },
      el("td", { class: "status s" + String(p.status)[0] }, p.status),
      el("td", { class: "mono", title: p.type }, p.slug),
      el("td", null, p.title),
      el("td", null, p.extends ? problemLink(p.extends) : "")));
    const table = el("table", null,
      el("thead", null, el("tr", null, el("th", null, "status"), el("th", null, "slug"), el("th", null, "title 标题"), el("th", null, "refines 细化自"))),
      el("tbody", null, rows));
    const section = el("section", { id: "problems" }, el("h2", { class: "section" }, "Problem types 错误类型"),
      el("p", { class: "muted" }, "Every error is RFC 9457 application/problem+json; its ", el("code", null, "type"),
        " is one of these stable URIs (prefix ", el("code", null, problems.length ? problems[0].type.replace(/[^/]*$/, "") : ""),
        "). 所有错误均为 RFC 9457 格式，type 取值如下。"),
      table);
    nav.append(el("h2", null, el("a", { href: "#problems" }, "Problem types 错误类型 (" + problems.length + ")")));
    return section;
  }

  function renderSchemas(nav) {
    const schemas = (spec.components && spec.components.schemas) || {};
    const section = el("section", { id: "schemas" }, el("h2", { class: "section" }, "Schemas 数据结构"));
    const list = el("ul");
    for (const [name, schema] of Object.entries(schemas)) {
      section.append(el("div", { id: "schema-" + name }, el("h3", { class: "tag mono" }, name), schemaBlock(schema, 0)));
      list.append(el("li", null, el("a", { href: "#schema-" + name, class: "mono" }, name)));
    }
    nav.append(el("h2", null, el("a", { href: "#schemas" }, "Schemas 数据结构")), list);
    return section;
  }

  function applyFilter(query) {
    const q = query.trim().toLowerCase();
    for (const card of document.querySelectorAll("details.op")) {
      const hit = !q || card.dataset.search.includes(q);
      card.classList.toggle("hidden", !hit);
      const link = document.querySelector('#nav li[data-for="' + card.id + '"]');
      if (link) link.classList.toggle("hidden", !hit);
    }
    for (const row of document.querySelectorAll("#problems tr[data-search]")) {
      row.classList.toggle("hidden", Boolean(q) && !row.dataset.search.includes(q));
    }
  }

  function openTarget() {
    const id = decodeURIComponent(location.hash.slice(1));
    const target = id && document.getElementById(id);
    if (!target) return;
    if (target.tagName === "DETAILS") target.open = true;
    target.scrollIntoView();
  }

  function render() {
    const info = spec.info || {};
    document.title = (info.title || "API") + " " + (info.version || "");
    document.getElementById("title").textContent = (info.title || "API") + " · v" + (info.version || "?");
    const summary = document.getElementById("summary");
    summary.textContent = info.summary || "";
    summary.append(" · OpenAPI " + spec.openapi + " · ", el("span", { class: "mono" }, ((spec.servers || [])[0] || {}).url || "/"));
    const main = document.getElementById("main");
    const nav = document.getElementById("nav");
    main.replaceChildren(el("section", { id: "about" }, el("h2", { class: "section" }, "Overview 概述"), paragraphs(info.description)));
    main.append(renderOperations(nav), renderSecurity(nav), renderProblems(nav), renderSchemas(nav));
    document.getElementById("filter").addEventListener("input", (e) => applyFilter(e.target.value));
    window.addEventListener("hashchange", openTarget);
    openTarget();
  }

  function fail(message) {
    const main = document.getElementById("main");
    main.replaceChildren(el("p", { class: "error" }, "Could not load openapi.json 无法加载接口文档: " + message));
  }

  document.addEventListener("DOMContentLoaded", () => {
    fetch("openapi.json", { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error("HTTP " + r.status))))
      .then((doc) => { spec = doc; render(); })
      .catch((err) => fail(err.message));
  });
})();
