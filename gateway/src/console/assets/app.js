// The atrest console's one script. It builds every page with the DOM API: text
// from the server (aliases, descriptions, object keys, trail fields) is only ever
// set through textContent or attribute setters, never parsed as HTML.
"use strict";

(function () {
  let session = null;

  // ---- DOM helpers -------------------------------------------------------

  // el("tag", {attr: value, on: {click: fn}}, child...): children are nodes or
  // text (strings become text nodes).
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "on") {
        for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
      } else if (name === "text") {
        node.textContent = value;
      } else if (value === true) {
        node.setAttribute(name, "");
      } else if (value !== false && value !== null && value !== undefined) {
        node.setAttribute(name, String(value));
      }
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function main() { return document.getElementById("main"); }

  function show(...nodes) {
    const m = main();
    m.replaceChildren(...nodes.flat());
  }

  function flash(kind, text) {
    const box = document.getElementById("flash");
    box.className = kind;
    box.textContent = text;
    box.hidden = !text;
  }

  function result(node, ok, text) {
    node.className = "result " + (ok ? "ok" : "error");
    node.textContent = text;
    node.hidden = false;
  }

  function table(headers, rows) {
    return el("table", {},
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows));
  }

  function props(pairs) {
    return el("dl", { class: "props" },
      pairs.flatMap(([name, value, id]) => [el("dt", {}, name), el("dd", { id: id || null }, value === undefined || value === null ? "—" : value)]));
  }

  function route(...parts) {
    return "#/" + parts.map(encodeURIComponent).join("/");
  }

  // ---- API ---------------------------------------------------------------

  class ApiError extends Error {
    constructor(code, message, status) {
      super(message);
      this.code = code;
      this.status = status;
    }
    toString() { return this.code + ": " + this.message; }
  }

  async function api(method, path, body) {
    const init = { method, headers: {}, credentials: "same-origin" };
    if (method !== "GET") {
      init.headers["Content-Type"] = "application/json";
      if (session) init.headers["X-CSRF-Token"] = session.csrf;
      init.body = JSON.stringify(body || {});
    }
    const response = await fetch("/console/api/" + path, init);
    const text = await response.text();
    let data = {};
    try { data = text ? JSON.parse(text) : {}; } catch (e) { data = { message: text }; }
    if (response.status === 401 && path !== "signin") {
      session = null;
      signInPage("Your session ended; sign in again.");
      throw new ApiError("NotSignedIn", "signed out", 401);
    }
    if (!response.ok) {
      throw new ApiError(data.__type || ("HTTP " + response.status), data.message || "", response.status);
    }
    return data;
  }

  // A KMS call as the signed-in principal; errors carry the AWS error name.
  async function kms(operation, input) {
    const data = await api("POST", "kms", { operation, input: input || {} });
    return data;
  }

  // An S3 call; the answer's XML is parsed (never inserted as HTML).
  async function s3(method, bucket, key, query, headers, body) {
    const answer = await api("POST", "s3", {
      method, bucket: bucket || "", key: key || "", query: query || [], headers: headers || {}, body: body || "",
    });
    answer.xml = answer.body ? new DOMParser().parseFromString(answer.body, "application/xml") : null;
    if (answer.status >= 300) {
      const code = xmlText(answer.xml, "Code") || ("HTTP " + answer.status);
      throw new ApiError(code, xmlText(answer.xml, "Message") || "", answer.status);
    }
    return answer;
  }

  function xmlText(doc, tag, within) {
    if (!doc) return "";
    const node = (within || doc).getElementsByTagName(tag)[0];
    return node ? node.textContent : "";
  }

  function xmlAll(doc, tag) {
    return doc ? Array.from(doc.getElementsByTagName(tag)) : [];
  }

  async function guard(node, work) {
    try {
      await work();
    } catch (e) {
      if (e.status === 401 && e.code === "NotSignedIn") return;
      if (node) result(node, false, String(e)); else flash("error", String(e));
    }
  }

  // ---- sign-in -----------------------------------------------------------

  function signInPage(message) {
    document.getElementById("nav").hidden = true;
    document.getElementById("signout").hidden = true;
    document.getElementById("who").textContent = "";
    const keyId = el("input", { type: "text", id: "access-key-id", autocomplete: "username", spellcheck: "false" });
    const secret = el("input", { type: "password", id: "secret-access-key", autocomplete: "current-password" });
    const out = el("div", { id: "signin-result", hidden: true });
    const form = el("form", { id: "signin-form", on: { submit: async (event) => {
      event.preventDefault();
      try {
        session = await api("POST", "signin", { accessKeyId: keyId.value, secretAccessKey: secret.value });
        secret.value = "";
        signedIn();
        if (!location.hash || location.hash === "#/signin") location.hash = "#/keys"; else render();
      } catch (e) {
        secret.value = "";
        result(out, false, String(e));
      }
    } } },
    el("label", { for: "access-key-id" }, "Access key ID"), keyId,
    el("label", { for: "secret-access-key" }, "Secret access key"), secret,
    el("div", { class: "row" }, el("button", { class: "primary", type: "submit", id: "signin" }, "Sign in")),
    out);
    flash("", "");
    show(el("div", { class: "panel signin" },
      el("h1", {}, "Sign in to the atrest console"),
      el("p", { class: "muted" }, message || "Use an access key made by `atrest iam create-access-key`. Every action runs as its principal."),
      form));
  }

  function signedIn() {
    document.getElementById("nav").hidden = false;
    document.getElementById("signout").hidden = false;
    document.getElementById("who").textContent = session.principal + " (" + session.accessKeyId + ")";
  }

  // ---- keys --------------------------------------------------------------

  async function keysPage() {
    const out = el("div", { hidden: true });
    const body = el("tbody", { id: "keys-body" });
    show(el("h1", {}, "Customer managed keys"),
      el("div", { class: "row" }, el("a", { class: "button primary", href: "#/keys/new", id: "create-key" }, "Create key")),
      el("div", { class: "panel" },
        el("table", { id: "keys-table" },
          el("thead", {}, el("tr", {}, ["Alias", "Key ID", "Status", "Rotation", "Created"].map((h, i) => el("th", { class: i === 4 ? "hide-narrow" : null }, h)))),
          body)),
      out);
    await guard(out, async () => {
      const [keys, aliases] = await Promise.all([listAll("ListKeys", "Keys"), listAll("ListAliases", "Aliases")]);
      const aliasOf = {};
      for (const a of aliases) if (a.TargetKeyId) (aliasOf[a.TargetKeyId] = aliasOf[a.TargetKeyId] || []).push(a.AliasName);
      for (const key of keys) {
        const row = el("tr", { class: "clickable", "data-key-id": key.KeyId, on: { click: () => { location.hash = route("keys", key.KeyId); } } });
        body.append(row);
        let meta = null;
        let rotation = "—";
        try { meta = (await kms("DescribeKey", { KeyId: key.KeyId })).KeyMetadata; } catch (e) { /* not allowed to describe */ }
        if (meta && meta.KeyManager === "AWS") { row.remove(); continue; }
        try {
          const r = await kms("GetKeyRotationStatus", { KeyId: key.KeyId });
          rotation = r.KeyRotationEnabled ? "Enabled" : "Disabled";
        } catch (e) { /* key users may not read it */ }
        row.append(
          el("td", {}, (aliasOf[key.KeyId] || ["—"]).join(", ")),
          el("td", {}, el("a", { href: route("keys", key.KeyId) }, key.KeyId)),
          el("td", { class: meta ? "status-" + meta.KeyState : null }, meta ? meta.KeyState : "(no access)"),
          el("td", {}, rotation),
          el("td", { class: "hide-narrow" }, meta ? dateText(meta.CreationDate) : "—"));
      }
      if (!keys.length) body.append(el("tr", {}, el("td", { colspan: 5 }, "No keys yet.")));
    });
  }

  async function listAll(operation, member) {
    const items = [];
    let marker;
    do {
      const page = await kms(operation, marker ? { Marker: marker } : {});
      items.push(...(page[member] || []));
      marker = page.Truncated ? page.NextMarker : null;
    } while (marker);
    return items;
  }

  function dateText(value) {
    if (value === undefined || value === null) return "—";
    const d = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    return isNaN(d) ? String(value) : d.toISOString().replace(".000Z", "Z");
  }

  function arnList(text) {
    return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
  }

  function keyPolicy(account, admins, users) {
    const statements = [{
      Sid: "Enable IAM User Permissions", Effect: "Allow",
      Principal: { AWS: "arn:aws:iam::" + account + ":root" }, Action: "kms:*", Resource: "*",
    }];
    if (admins.length) statements.push({
      Sid: "Allow access for Key Administrators", Effect: "Allow", Principal: { AWS: admins },
      Action: ["kms:Create*", "kms:Describe*", "kms:Enable*", "kms:List*", "kms:Put*", "kms:Update*",
        "kms:Revoke*", "kms:Disable*", "kms:Get*", "kms:Delete*", "kms:TagResource", "kms:UntagResource",
        "kms:ScheduleKeyDeletion", "kms:CancelKeyDeletion", "kms:RotateKeyOnDemand"],
      Resource: "*",
    });
    if (users.length) statements.push({
      Sid: "Allow use of the key", Effect: "Allow", Principal: { AWS: users },
      Action: ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
      Resource: "*",
    });
    return { Version: "2012-10-17", Id: "key-consolepolicy", Statement: statements };
  }

  function accountOf(arn) {
    const parts = String(arn).split(":");
    return parts.length > 4 && parts[4] ? parts[4] : "000000000000";
  }

  function createKeyPage() {
    const alias = el("input", { type: "text", id: "key-alias", placeholder: "MyKMSKey" });
    const description = el("input", { type: "text", id: "key-description" });
    const admins = el("textarea", { id: "key-admins", placeholder: "arn:aws:iam::000000000000:user/KeyAdmin" }, session.principal);
    const users = el("textarea", { id: "key-users", placeholder: "arn:aws:iam::000000000000:user/KeyUser" });
    const preview = el("pre", { id: "policy-preview" });
    const out = el("div", { id: "create-result", hidden: true });
    const steps = [el("div", { class: "panel", id: "step-1" }, el("h2", {}, "1. Alias and description"),
      el("label", { for: "key-alias" }, "Alias (alias/ is added)"), alias,
      el("label", { for: "key-description" }, "Description"), description),
    el("div", { class: "panel", id: "step-2" }, el("h2", {}, "2. Key administrators"),
      el("p", { class: "muted" }, "Principal ARNs, one per line: they may enable, disable, rotate, change the policy and schedule deletion."),
      admins),
    el("div", { class: "panel", id: "step-3" }, el("h2", {}, "3. Key users"),
      el("p", { class: "muted" }, "Principal ARNs, one per line: they may encrypt, decrypt and generate data keys."),
      users),
    el("div", { class: "panel", id: "step-4" }, el("h2", {}, "4. Review the key policy"), preview)];
    const refresh = () => {
      preview.textContent = JSON.stringify(keyPolicy(accountOf(session.principal), arnList(admins.value), arnList(users.value)), null, 2);
    };
    for (const input of [admins, users]) input.addEventListener("input", refresh);
    refresh();
    const create = el("button", { class: "primary", id: "create-key-submit", type: "button", on: { click: () => guard(out, async () => {
      const name = alias.value.trim().replace(/^alias\//, "");
      if (!name) throw new ApiError("ValidationException", "an alias is needed");
      create.disabled = true;
      try {
        const created = await kms("CreateKey", { Description: description.value, Policy: preview.textContent });
        const keyId = created.KeyMetadata.KeyId;
        await kms("CreateAlias", { AliasName: "alias/" + name, TargetKeyId: keyId });
        flash("ok", "Created alias/" + name + " (" + keyId + ")");
        location.hash = route("keys", keyId);
      } finally { create.disabled = false; }
    }) } }, "Create key");
    show(el("h1", {}, "Create key"), steps, el("div", { class: "row" }, create, el("a", { href: "#/keys", class: "button" }, "Cancel")), out);
  }

  async function keyPage(keyId) {
    const out = el("div", { id: "key-result", hidden: true });
    const config = el("div", { class: "panel", id: "key-config" }, "Loading…");
    const policyBox = el("textarea", { id: "key-policy", rows: 16 });
    const policyPanel = el("div", { class: "panel", id: "key-policy-panel" }, el("h2", {}, "Key policy"), policyBox,
      el("div", { class: "row" }, el("button", { id: "save-policy", type: "button", on: { click: () => guard(out, async () => {
        JSON.parse(policyBox.value);
        await kms("PutKeyPolicy", { KeyId: keyId, PolicyName: "default", Policy: policyBox.value });
        result(out, true, "Key policy saved.");
      }) } }, "Save policy")));
    const rotation = el("div", { class: "panel", id: "key-rotation" }, el("h2", {}, "Rotation"));
    const actions = el("div", { class: "panel", id: "key-actions" }, el("h2", {}, "Key state"));
    show(el("h1", {}, "Key ", el("span", { id: "key-title" }, keyId)), out, config, actions, rotation, policyPanel);
    const act = (label, id, work, cls) => el("button", { id, type: "button", class: cls || null, on: { click: () => guard(out, async () => {
      await work();
      result(out, true, label + ": done.");
      await refresh();
    }) } }, label);
    async function refresh() {
      let meta;
      try {
        meta = (await kms("DescribeKey", { KeyId: keyId })).KeyMetadata;
      } catch (e) {
        config.replaceChildren(el("div", { class: "result error" }, String(e)));
        return;
      }
      const aliases = (await listAll("ListAliases", "Aliases").catch(() => [])).filter((a) => a.TargetKeyId === meta.KeyId).map((a) => a.AliasName);
      config.replaceChildren(el("h2", {}, "General configuration"), props([
        ["Aliases", aliases.join(", ") || "—", "key-aliases"],
        ["Key ID", meta.KeyId],
        ["ARN", meta.Arn, "key-arn"],
        ["Status", el("span", { class: "status-" + meta.KeyState, id: "key-state" }, meta.KeyState)],
        ["Description", meta.Description || "—", "key-description-view"],
        ["Key spec / usage", meta.KeySpec + " / " + meta.KeyUsage],
        ["Created", dateText(meta.CreationDate)],
        ["Deletion date", meta.DeletionDate ? dateText(meta.DeletionDate) : "—", "key-deletion-date"],
      ]));
      const days = el("input", { type: "number", id: "deletion-days", min: 7, max: 30, value: 30 });
      actions.replaceChildren(el("h2", {}, "Key state"), el("div", { class: "row" },
        act("Enable", "enable-key", () => kms("EnableKey", { KeyId: keyId })),
        act("Disable", "disable-key", () => kms("DisableKey", { KeyId: keyId }), "danger")),
      el("div", { class: "row" }, el("span", {}, "Waiting period (days)"), el("span", { style: null }, days),
        act("Schedule deletion", "schedule-deletion", () => kms("ScheduleKeyDeletion", { KeyId: keyId, PendingWindowInDays: Number(days.value) }), "danger"),
        act("Cancel deletion", "cancel-deletion", () => kms("CancelKeyDeletion", { KeyId: keyId }))));
      try {
        policyBox.value = JSON.stringify(JSON.parse((await kms("GetKeyPolicy", { KeyId: keyId, PolicyName: "default" })).Policy), null, 2);
      } catch (e) {
        policyBox.value = "";
        policyBox.placeholder = String(e);
      }
      const period = el("input", { type: "number", id: "rotation-period", min: 90, max: 2560, value: 365 });
      const history = el("div", { id: "rotation-history" });
      let status = "—";
      try {
        const r = await kms("GetKeyRotationStatus", { KeyId: keyId });
        status = r.KeyRotationEnabled ? "Enabled, every " + r.RotationPeriodInDays + " days" + (r.NextRotationDate ? ", next " + dateText(r.NextRotationDate) : "") : "Disabled";
        if (r.RotationPeriodInDays) period.value = r.RotationPeriodInDays;
        const rotations = (await kms("ListKeyRotations", { KeyId: keyId })).Rotations || [];
        history.replaceChildren(rotations.length
          ? table(["Rotated", "Type"], rotations.map((x) => el("tr", {}, el("td", {}, dateText(x.RotationDate)), el("td", {}, x.RotationType))))
          : el("p", { class: "muted" }, "No rotations yet."));
      } catch (e) {
        status = String(e);
      }
      rotation.replaceChildren(el("h2", {}, "Rotation"), props([["Automatic rotation", status, "rotation-status"]]),
        el("div", { class: "row" }, el("span", {}, "Period (days)"), period,
          act("Enable rotation", "enable-rotation", () => kms("EnableKeyRotation", { KeyId: keyId, RotationPeriodInDays: Number(period.value) })),
          act("Disable rotation", "disable-rotation", () => kms("DisableKeyRotation", { KeyId: keyId })),
          act("Rotate now", "rotate-now", () => kms("RotateKeyOnDemand", { KeyId: keyId }))),
        history);
    }
    await refresh();
  }

  // ---- buckets and objects -----------------------------------------------

  async function bucketsPage() {
    const out = el("div", { id: "buckets-result", hidden: true });
    const body = el("tbody", { id: "buckets-body" });
    const name = el("input", { type: "text", id: "bucket-name", placeholder: "my-bucket" });
    show(el("h1", {}, "Buckets"),
      el("div", { class: "panel" }, el("label", { for: "bucket-name" }, "New bucket"), el("div", { class: "row" }, name,
        el("button", { class: "primary", id: "create-bucket", type: "button", on: { click: () => guard(out, async () => {
          await s3("PUT", name.value.trim(), "", [], {}, "");
          location.hash = route("buckets", name.value.trim());
        }) } }, "Create bucket"))),
      out,
      el("div", { class: "panel" }, el("table", { id: "buckets-table" }, el("thead", {}, el("tr", {}, el("th", {}, "Name"), el("th", {}, "Created"))), body)));
    await guard(out, async () => {
      const answer = await s3("GET", "", "", [], {}, "");
      for (const bucket of xmlAll(answer.xml, "Bucket")) {
        const bucketName = xmlText(answer.xml, "Name", bucket);
        body.append(el("tr", {}, el("td", {}, el("a", { href: route("buckets", bucketName) }, bucketName)), el("td", {}, xmlText(answer.xml, "CreationDate", bucket))));
      }
    });
  }

  async function keyChoices() {
    const aliases = await listAll("ListAliases", "Aliases").catch(() => []);
    return aliases.filter((a) => a.TargetKeyId && !a.AliasName.startsWith("alias/aws/")).map((a) => a.AliasName);
  }

  async function bucketPage(bucket, prefix) {
    prefix = prefix || "";
    const out = el("div", { id: "bucket-result", hidden: true });
    const encryption = el("div", { class: "panel", id: "bucket-encryption" }, el("h2", {}, "Default encryption"), "Loading…");
    const objects = el("tbody", { id: "objects-body" });
    const crumbs = el("div", { class: "crumbs", id: "crumbs" }, el("a", { href: route("buckets", bucket) }, bucket + "/"));
    let acc = "";
    for (const part of prefix.split("/").filter(Boolean)) {
      acc += part + "/";
      crumbs.append(el("a", { href: route("buckets", bucket, acc) }, part + "/"));
    }
    const file = el("input", { type: "file", id: "upload-file" });
    const upKey = el("input", { type: "text", id: "upload-key", placeholder: "(the file's name)" });
    const sse = el("select", { id: "upload-sse" }, el("option", { value: "" }, "Bucket default encryption"));
    const bar = el("progress", { id: "upload-progress", max: 100, value: 0 });
    const upload = el("div", { class: "panel", id: "upload-panel" }, el("h2", {}, "Upload"),
      el("label", { for: "upload-file" }, "File"), file,
      el("label", { for: "upload-key" }, "Object key (under " + (prefix || "the bucket root") + ")"), upKey,
      el("label", { for: "upload-sse" }, "Encryption"), sse,
      el("div", { class: "row" }, el("button", { class: "primary", type: "button", id: "upload-submit", on: { click: () => guard(out, () => uploadFile(bucket, prefix, file, upKey, sse, bar, out)) } }, "Upload")),
      bar);
    show(el("h1", {}, "Bucket ", el("span", { id: "bucket-title" }, bucket)), out, encryption, upload,
      el("div", { class: "panel" }, el("h2", {}, "Objects"), crumbs,
        el("table", { id: "objects-table" }, el("thead", {}, el("tr", {}, el("th", {}, "Key"), el("th", {}, "Size"), el("th", { class: "hide-narrow" }, "Last modified"), el("th", {}, ""))), objects)));
    const choices = await keyChoices();
    for (const a of choices) sse.append(el("option", { value: a }, "SSE-KMS with " + a));
    await guard(out, async () => {
      await showEncryption(bucket, encryption, choices, out);
      const listed = await s3("GET", bucket, "", [["list-type", "2"], ["delimiter", "/"], ["prefix", prefix]], {}, "");
      for (const p of xmlAll(listed.xml, "CommonPrefixes")) {
        const sub = xmlText(listed.xml, "Prefix", p);
        objects.append(el("tr", {}, el("td", {}, el("a", { href: route("buckets", bucket, sub), class: "folder" }, sub.slice(prefix.length))), el("td", {}, "folder"), el("td", { class: "hide-narrow" }, ""), el("td", {}, "")));
      }
      for (const c of xmlAll(listed.xml, "Contents")) {
        const key = xmlText(listed.xml, "Key", c);
        const del = el("button", { type: "button", class: "danger", on: { click: () => guard(out, async () => {
          if (!window.confirm("Delete " + key + "?")) return;
          await s3("DELETE", bucket, key, [], {}, "");
          render();
        }) } }, "Delete");
        objects.append(el("tr", { "data-key": key },
          el("td", {}, el("a", { href: route("object", bucket, key), class: "object-link" }, key.slice(prefix.length))),
          el("td", {}, xmlText(listed.xml, "Size", c)),
          el("td", { class: "hide-narrow" }, xmlText(listed.xml, "LastModified", c)),
          el("td", {}, del)));
      }
    });
  }

  async function showEncryption(bucket, panel, choices, out) {
    let current = { algorithm: "", key: "", bucketKey: false };
    try {
      const answer = await s3("GET", bucket, "", [["encryption", ""]], {}, "");
      current = {
        algorithm: xmlText(answer.xml, "SSEAlgorithm"),
        key: xmlText(answer.xml, "KMSMasterKeyID"),
        bucketKey: xmlText(answer.xml, "BucketKeyEnabled") === "true",
      };
    } catch (e) {
      if (e.code !== "ServerSideEncryptionConfigurationNotFoundError") throw e;
    }
    const type = el("select", { id: "encryption-type" },
      el("option", { value: "AES256" }, "SSE-S3"), el("option", { value: "aws:kms" }, "SSE-KMS"));
    type.value = current.algorithm === "aws:kms" ? "aws:kms" : "AES256";
    const key = el("select", { id: "encryption-key" }, el("option", { value: "" }, "(the AWS managed key aws/s3)"));
    for (const a of choices) key.append(el("option", { value: a }, a));
    if (current.key && !choices.includes(current.key)) key.append(el("option", { value: current.key }, current.key));
    key.value = current.key;
    const bucketKey = el("input", { type: "checkbox", id: "encryption-bucket-key" });
    bucketKey.checked = current.bucketKey;
    panel.replaceChildren(el("h2", {}, "Default encryption"),
      props([["Encryption", current.algorithm ? (current.algorithm === "aws:kms" ? "SSE-KMS" : "SSE-S3") : "None", "encryption-current"],
        ["KMS key", current.key || "—", "encryption-current-key"],
        ["Bucket key", current.bucketKey ? "Enabled" : "Disabled", "encryption-current-bucket-key"]]),
      el("label", { for: "encryption-type" }, "Type"), type,
      el("label", { for: "encryption-key" }, "KMS key"), key,
      el("label", {}, bucketKey, " Bucket key"),
      el("div", { class: "row" }, el("button", { type: "button", id: "save-encryption", on: { click: () => guard(out, async () => {
        const doc = document.implementation.createDocument("http://s3.amazonaws.com/doc/2006-03-01/", "ServerSideEncryptionConfiguration", null);
        const add = (parent, name, text) => {
          const node = doc.createElementNS("http://s3.amazonaws.com/doc/2006-03-01/", name);
          if (text !== undefined) node.textContent = text;
          parent.appendChild(node);
          return node;
        };
        const r = add(doc.documentElement, "Rule");
        const def = add(r, "ApplyServerSideEncryptionByDefault");
        add(def, "SSEAlgorithm", type.value);
        if (type.value === "aws:kms" && key.value) add(def, "KMSMasterKeyID", key.value);
        add(r, "BucketKeyEnabled", bucketKey.checked ? "true" : "false");
        await s3("PUT", bucket, "", [["encryption", ""]], { "content-type": "application/xml" }, new XMLSerializer().serializeToString(doc));
        result(out, true, "Default encryption saved.");
        await showEncryption(bucket, panel, choices, out);
      }) } }, "Save default encryption")));
  }

  function uploadFile(bucket, prefix, file, upKey, sse, bar, out) {
    const chosen = file.files[0];
    if (!chosen) return Promise.reject(new ApiError("ValidationException", "choose a file"));
    const key = prefix + (upKey.value.trim() || chosen.name);
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PUT", "/console/api/upload?bucket=" + encodeURIComponent(bucket) + "&key=" + encodeURIComponent(key));
      xhr.setRequestHeader("X-CSRF-Token", session.csrf);
      xhr.setRequestHeader("Content-Type", chosen.type || "application/octet-stream");
      if (sse.value) {
        xhr.setRequestHeader("x-amz-server-side-encryption", "aws:kms");
        xhr.setRequestHeader("x-amz-server-side-encryption-aws-kms-key-id", sse.value);
      }
      xhr.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) bar.value = Math.round((100 * e.loaded) / e.total);
      });
      xhr.addEventListener("load", () => {
        let answer = {};
        try { answer = JSON.parse(xhr.responseText); } catch (e) { /* below */ }
        if (xhr.status !== 200 || !answer.status || answer.status >= 300) {
          const xml = answer.body ? new DOMParser().parseFromString(answer.body, "application/xml") : null;
          reject(new ApiError(xmlText(xml, "Code") || answer.__type || ("HTTP " + xhr.status), xmlText(xml, "Message") || answer.message || ""));
          return;
        }
        bar.value = 100;
        flash("ok", "Uploaded " + key);
        location.hash = route("object", bucket, key);
        resolve();
      });
      xhr.addEventListener("error", () => reject(new ApiError("NetworkError", "the upload failed")));
      xhr.send(chosen);
    });
  }

  async function objectPage(bucket, key) {
    const out = el("div", { id: "object-result", hidden: true });
    const properties = el("div", { class: "panel", id: "object-properties" }, "Loading…");
    const objectUrl = location.origin + "/" + encodeURIComponent(bucket) + "/" + key.split("/").map(encodeURIComponent).join("/");
    const anonResult = el("div", { id: "anonymous-result", hidden: true });
    const openResult = el("div", { id: "open-result", hidden: true });
    const viewer = el("div", { id: "object-viewer" });
    const aclState = el("span", { id: "acl-state" }, "…");
    show(el("h1", {}, "Object ", el("span", { id: "object-title" }, key)),
      el("div", { class: "crumbs" }, el("a", { href: route("buckets", bucket) }, "← " + bucket)),
      out, properties,
      el("div", { class: "panel" }, el("h2", {}, "Object URL"), el("pre", { id: "object-url" }, objectUrl),
        el("div", { class: "row" }, el("button", { type: "button", id: "try-anonymous", on: { click: () => guard(anonResult, async () => {
          const response = await fetch(objectUrl, { credentials: "omit", cache: "no-store" });
          const text = await response.text();
          const xml = new DOMParser().parseFromString(text, "application/xml");
          if (response.ok) {
            result(anonResult, false, "HTTP " + response.status + ": anonymous users can read this object!");
          } else {
            result(anonResult, true, "HTTP " + response.status + " " + (xmlText(xml, "Code") || "") + ": " + (xmlText(xml, "Message") || ""));
          }
        }) } }, "Try it anonymously")), anonResult),
      el("div", { class: "panel" }, el("h2", {}, "Open"),
        el("p", { class: "muted" }, "Opens the object through a presigned (SigV4) URL made with your access key, valid 5 minutes."),
        el("div", { class: "row" }, el("button", { type: "button", class: "primary", id: "open-object", on: { click: () => guard(openResult, async () => {
          const signed = await api("POST", "presign", { bucket, key });
          const response = await fetch(signed.url, { credentials: "omit", cache: "no-store" });
          if (!response.ok) {
            const xml = new DOMParser().parseFromString(await response.text(), "application/xml");
            throw new ApiError(xmlText(xml, "Code") || ("HTTP " + response.status), xmlText(xml, "Message"));
          }
          const blob = await response.blob();
          const type = response.headers.get("content-type") || "";
          const link = el("a", { href: signed.url, id: "presigned-link", rel: "noreferrer", target: "_blank" }, "presigned URL");
          if (type.startsWith("image/")) {
            viewer.replaceChildren(el("img", { class: "preview", id: "object-image", alt: key, src: URL.createObjectURL(blob) }));
          } else {
            viewer.replaceChildren(el("p", {}, blob.size + " bytes of " + (type || "data") + "."));
          }
          result(openResult, true, "Opened through a presigned URL (" + blob.size + " bytes). ");
          openResult.append(link);
        }) } }, "Open")), openResult, viewer),
      el("div", { class: "panel" }, el("h2", {}, "Access control list"), el("p", {}, "Public read: ", aclState),
        el("div", { class: "row" }, el("button", { type: "button", id: "toggle-public", on: { click: () => guard(out, async () => {
          const now = aclState.textContent === "Yes";
          await s3("PUT", bucket, key, [["acl", ""]], { "x-amz-acl": now ? "private" : "public-read" }, "");
          await loadAcl();
          result(out, true, now ? "The object is private again." : "The object is marked public-read (SSE-KMS objects still refuse anonymous reads).");
        }) } }, "Toggle public-read"))));
    async function loadAcl() {
      try {
        const acl = await s3("GET", bucket, key, [["acl", ""]], {}, "");
        const isPublic = xmlAll(acl.xml, "Grant").some((g) => xmlText(acl.xml, "URI", g).endsWith("/AllUsers") && xmlText(acl.xml, "Permission", g) === "READ");
        aclState.textContent = isPublic ? "Yes" : "No";
      } catch (e) {
        aclState.textContent = String(e);
      }
    }
    await guard(out, async () => {
      const head = await s3("HEAD", bucket, key, [], {}, "");
      const h = head.headers;
      properties.replaceChildren(el("h2", {}, "Properties"), props([
        ["Key", key, "prop-key"],
        ["Size", h["content-length"], "prop-size"],
        ["Type", h["content-type"], "prop-type"],
        ["ETag", h["etag"], "prop-etag"],
        ["Last modified", h["last-modified"], "prop-modified"],
        ["Server-side encryption", h["x-amz-server-side-encryption"], "prop-sse"],
        ["SSE-KMS key ARN", h["x-amz-server-side-encryption-aws-kms-key-id"], "prop-kms-key"],
        ["Bucket key", h["x-amz-server-side-encryption-bucket-key-enabled"] === "true" ? "Enabled" : "Disabled", "prop-bucket-key"],
      ]));
      const arn = h["x-amz-server-side-encryption-aws-kms-key-id"];
      if (arn) {
        try {
          const meta = (await kms("DescribeKey", { KeyId: arn })).KeyMetadata;
          properties.append(props([["KMS key state", el("span", { class: "status-" + meta.KeyState, id: "prop-key-state" }, meta.KeyState)]]));
        } catch (e) {
          properties.append(props([["KMS key state", String(e), "prop-key-state"]]));
        }
      }
    });
    await loadAcl();
  }

  // ---- volumes -----------------------------------------------------------

  function bytesText(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return (i ? v.toFixed(1) : String(v)) + " " + units[i];
  }

  // A <select> of the keys the principal can name: aliases (customer ones), then
  // key ids without an alias. `first` options come before them ([value, label]).
  async function keyPicker(id, first) {
    const select = el("select", { id }, first.map(([value, label]) => el("option", { value }, label)));
    try {
      const aliases = await listAll("ListAliases", "Aliases");
      const named = new Set();
      for (const a of aliases) {
        if (!a.TargetKeyId || a.AliasName.startsWith("alias/aws/")) continue;
        named.add(a.TargetKeyId);
        select.append(el("option", { value: a.AliasName }, a.AliasName));
      }
      for (const k of await listAll("ListKeys", "Keys")) {
        if (!named.has(k.KeyId)) select.append(el("option", { value: k.KeyId }, k.KeyId));
      }
    } catch (e) { /* listing refused: the first options only */ }
    return select;
  }

  async function volumesPage() {
    const out = el("div", { id: "volumes-result", hidden: true });
    const actionOut = el("div", { id: "volume-action-result", hidden: true });
    const body = el("tbody", { id: "volumes-body" });
    const dirs = el("p", { class: "muted", id: "volume-dirs" });
    const source = el("select", { id: "action-volume" });
    const directory = el("select", { id: "create-dir" });
    const [copyKey, rewrapKey, createKey] = await Promise.all([
      keyPicker("copy-key", [["", "The source's key"]]),
      keyPicker("rewrap-key", [["", "The current key (its newest material)"]]),
      keyPicker("create-key", [["", "Unencrypted"]]),
    ]);
    const snapName = el("input", { type: "text", id: "snapshot-name", placeholder: "root-snap" });
    const copyName = el("input", { type: "text", id: "copy-name", placeholder: "root-enc" });
    const createName = el("input", { type: "text", id: "create-name", placeholder: "data" });
    const createSize = el("input", { type: "number", id: "create-size", min: "1", value: "64" });
    const createUnit = el("select", { id: "create-unit" }, el("option", { value: String(1 << 20) }, "MiB"), el("option", { value: String(1 << 30) }, "GiB"));
    const action = (label, id, path, payload, cls) => el("button", { id, type: "button", class: cls || null, on: { click: (event) => guard(actionOut, async () => {
      const button = event.currentTarget;
      button.disabled = true;
      result(actionOut, true, label + ": working…");
      try {
        const done = await api("POST", path, payload());
        result(actionOut, true, label + ": " + done.path + (done.keyArn ? " under " + done.keyArn : " (unencrypted)") + (done.readOnly ? ", read-only" : "") + ".");
        await load();
      } finally { button.disabled = false; }
    }) } }, label);
    show(el("h1", {}, "Volumes"), dirs, out,
      el("div", { class: "panel" }, el("table", { id: "volumes-table" },
        el("thead", {}, el("tr", {}, ["Volume", "Size", "Allocated", "Encrypted", "KMS key", "Key state"].map((h, i) => el("th", { class: i === 2 ? "hide-narrow" : null }, h)))),
        body)),
      el("div", { class: "panel", id: "volume-actions" }, el("h2", {}, "Actions"),
        el("p", { class: "muted" }, "Each action runs as " + session.principal + ": the key policy decides, and the trail records the KMS calls. Names are files in the volume's directory; nothing is ever replaced."),
        el("label", { for: "action-volume" }, "Volume"), source,
        el("h2", {}, "Snapshot (read-only, same key)"),
        el("div", { class: "row" }, snapName, action("Snapshot", "snapshot-submit", "volumes/snapshot", () => ({ path: source.value, name: snapName.value }))),
        el("h2", {}, "Encrypted copy (fresh data key)"),
        el("div", { class: "row" }, copyName, copyKey, action("Copy", "copy-submit", "volumes/copy", () => ({ path: source.value, name: copyName.value, keyId: copyKey.value || null }), "primary")),
        el("h2", {}, "Rewrap the data key (ReEncrypt)"),
        el("div", { class: "row" }, rewrapKey, action("Rewrap", "rewrap-submit", "volumes/rewrap", () => ({ path: source.value, keyId: rewrapKey.value || null }))),
        actionOut),
      el("div", { class: "panel", id: "create-volume" }, el("h2", {}, "Create volume"),
        el("label", { for: "create-dir" }, "Directory"), directory,
        el("label", { for: "create-name" }, "Name (.vol is added)"), createName,
        el("label", { for: "create-size" }, "Size"), el("div", { class: "row" }, createSize, createUnit),
        el("label", { for: "create-key" }, "KMS key"), createKey,
        el("div", { class: "row" }, action("Create volume", "create-submit", "volumes/create", () => ({
          directory: directory.value, name: createName.value,
          size: Math.round(Number(createSize.value) * Number(createUnit.value)), keyId: createKey.value || null,
        }), "primary"))),
      el("p", { class: "muted" }, el("a", { href: "#/exports" }, "NBD exports"), " swap a running server's export to one of these volumes."));
    async function load() {
      const data = await api("GET", "volumes");
      dirs.textContent = "Volumes (*.vol) under " + data.directories.join(", ");
      const chosen = source.value;
      const chosenDir = directory.value;
      body.replaceChildren();
      source.replaceChildren();
      directory.replaceChildren(...data.directories.map((d) => el("option", { value: d }, d)));
      if (chosenDir) directory.value = chosenDir;
      for (const v of data.volumes) {
        const name = v.path.split("/").pop();
        source.append(el("option", { value: v.path }, name));
        body.append(el("tr", { "data-volume": name },
          el("td", { title: v.path }, name, v.error ? el("div", { class: "result error" }, v.error) : null),
          el("td", {}, v.error ? "—" : bytesText(v.size)),
          el("td", { class: "hide-narrow" }, bytesText(v.allocated)),
          el("td", {}, v.error ? "—" : (v.encrypted ? "Yes (AES-256-XTS)" : "No")),
          el("td", { title: v.keyArn || "" }, v.keyArn ? v.keyArn.replace(/^arn:aws:kms:[^:]*:[^:]*:/, "") : "—"),
          el("td", { class: v.keyState ? "status-" + v.keyState : null }, v.keyState || "—")));
      }
      if (chosen) source.value = chosen;
      if (!data.volumes.length) body.append(el("tr", {}, el("td", { colspan: 6 }, "No volumes.")));
    }
    await guard(out, load);
  }

  // ---- NBD exports -------------------------------------------------------

  async function exportsPage() {
    const out = el("div", { id: "exports-result", hidden: true });
    const list = el("div", { id: "servers" });
    show(el("h1", {}, "NBD exports"),
      el("p", { class: "muted", id: "status-dir" }),
      out, list);
    await guard(out, async () => {
      const [data, vols] = await Promise.all([api("GET", "exports"), api("GET", "volumes")]);
      document.getElementById("status-dir").textContent = "Running `atrest nbd serve` processes, from their status files in " + data.statusDirectory + ".";
      for (const server of data.servers) {
        const swapOut = el("div", { id: "swap-result-" + server.pid, hidden: true });
        const exportRows = server.exports.map((x) => {
          const target = el("select", { id: "swap-target-" + x.name, "data-export": x.name },
            vols.volumes.filter((v) => !v.error).map((v) => el("option", { value: v.path, selected: v.path === x.path || null }, v.path.split("/").pop())));
          const swap = el("button", { type: "button", id: "swap-" + x.name, disabled: !server.exportsFile || null, on: { click: (event) => guard(swapOut, async () => {
            const button = event.currentTarget;
            button.disabled = true;
            result(swapOut, true, "Swapping " + x.name + ": editing " + server.exportsFile + ", then SIGHUP to " + server.pid + "…");
            try {
              const done = await api("POST", "exports/swap", { pid: server.pid, export: x.name, volume: target.value });
              flash("ok", "Export " + done.export + " now serves " + done.volume + " (was " + done.previous + ").");
              await exportsPage();
            } finally { button.disabled = false; }
          }) } }, "Swap");
          return el("tr", { "data-export": x.name },
            el("td", {}, x.name), el("td", { class: "export-path", title: x.path }, x.path),
            el("td", {}, x.readOnly ? "Yes" : "No"), el("td", { class: "hide-narrow" }, x.description || "—"),
            el("td", { class: "export-clients" }, String(x.clients)),
            el("td", {}, el("div", { class: "row" }, target, swap)));
        });
        const clientRows = server.clients.map((c) => el("tr", { "data-client": c.address },
          el("td", {}, c.address), el("td", {}, c.export || "(negotiating)"), el("td", {}, c.tlsIdentity || "—"), el("td", {}, dateText(c.since))));
        list.append(el("div", { class: "panel server", id: "server-" + server.pid, "data-pid": server.pid },
          el("h2", {}, "Server pid " + server.pid + " on " + server.listen.join(", ")),
          props([
            ["TLS", server.tls ? server.tls + (server.clientCertificates ? ", client certificates" : "") : "No"],
            ["Exports file", server.exportsFile || "— (exports from the command line: no swap while it runs)", "exports-file-" + server.pid],
            ["Started", dateText(server.started)],
          ]),
          el("h2", {}, "Exports"),
          table(["Export", "Volume", "Read-only", "Description", "Clients", "Swap to"], exportRows),
          swapOut,
          el("h2", {}, "Connected clients"),
          table(["Address", "Export", "TLS client", "Connected since"], clientRows.length ? clientRows : [el("tr", {}, el("td", { colspan: 4 }, "None."))])));
      }
      if (!data.servers.length) list.append(el("div", { class: "panel" }, "No NBD server is running."));
      if (data.gone.length) list.append(el("div", { class: "panel", id: "gone-servers" }, el("h2", {}, "Gone"),
        el("p", { class: "muted" }, "Status files of servers that stopped without removing them (killed); nothing in them is used."),
        table(["File", "Pid"], data.gone.map((g) => el("tr", {}, el("td", {}, g.file), el("td", {}, String(g.pid)))))));
    });
  }

  // ---- event history -----------------------------------------------------

  async function eventsPage(query) {
    const params = new URLSearchParams(query || "");
    const out = el("div", { id: "events-result", hidden: true });
    const filters = {};
    const filterRow = el("div", { class: "row" });
    for (const [name, label] of [["eventName", "Event name"], ["keyId", "Key (id, ARN or alias)"], ["user", "User"]]) {
      filters[name] = el("input", { type: "text", id: "filter-" + name, placeholder: label, value: params.get(name) || "" });
      filterRow.append(filters[name]);
    }
    const search = () => {
      const next = new URLSearchParams();
      for (const [name, input] of Object.entries(filters)) if (input.value.trim()) next.set(name, input.value.trim());
      location.hash = "#/events?" + next.toString();
    };
    filterRow.append(el("button", { type: "button", id: "filter-apply", on: { click: search } }, "Filter"));
    const body = el("tbody", { id: "events-body" });
    const detail = el("pre", { id: "event-json", hidden: true });
    const validation = el("div", { id: "validate-result", hidden: true });
    const more = el("button", { type: "button", id: "events-more", hidden: true }, "Older events");
    const chart = el("div", { class: "panel chart", id: "events-chart" }, el("h2", {}, "Calls per minute, last hour"));
    show(el("h1", {}, "Event history"),
      el("div", { class: "panel" }, filterRow,
        el("div", { class: "row" }, el("button", { type: "button", id: "validate-trail", on: { click: () => guard(validation, async () => {
          const v = await api("GET", "validate");
          if (v.valid) {
            result(validation, true, "Valid: " + v.records + " records chained up to #" + v.lastSequence + " (" + v.lastHash + "); " + v.digests + " signed digests cover " + v.digestedRecords + " records" + (v.lastDigestTime ? ", the last at " + v.lastDigestTime : "") + "." + (v.notes && v.notes.length ? " Notes: " + v.notes.join("; ") : ""));
          } else {
            result(validation, false, "INVALID: " + v.error);
          }
        }) } }, "Validate"), validation)),
      chart, out,
      el("div", { class: "panel" }, el("table", { id: "events-table" },
        el("thead", {}, el("tr", {}, ["Event time", "Event name", "User", "Key", "Source address", "Error code"].map((h, i) => el("th", { class: i === 4 ? "hide-narrow" : null }, h)))),
        body), el("div", { class: "row" }, more)),
      el("div", { class: "panel" }, el("h2", {}, "Event"), detail));
    let before = null;
    async function page() {
      const q = new URLSearchParams();
      for (const name of Object.keys(filters)) if (params.get(name)) q.set(name, params.get(name));
      if (before !== null) q.set("before", before);
      q.set("max", "50");
      const data = await api("GET", "events?" + q.toString());
      for (const event of data.events) {
        const identity = event.userIdentity || {};
        const user = identity.userName || identity.arn || identity.accessKeyId || identity.type || "";
        const keyArn = (event.resources || []).map((r) => r.ARN).join(", ") || (event.requestParameters && event.requestParameters.keyId) || "";
        body.append(el("tr", { class: "clickable event-row", "data-event-name": event.eventName, "data-user": user, on: { click: () => {
          detail.textContent = JSON.stringify(event, null, 2);
          detail.hidden = false;
          detail.scrollIntoView({ block: "nearest" });
        } } },
        el("td", {}, event.eventTime), el("td", {}, event.eventName), el("td", {}, user),
        el("td", { title: keyArn }, keyArn.replace(/^arn:aws:kms:[^:]*:[^:]*:/, "")), el("td", { class: "hide-narrow" }, event.sourceIPAddress), el("td", {}, event.errorCode || "")));
      }
      before = data.before;
      more.hidden = before === null || before === undefined;
    }
    more.addEventListener("click", () => guard(out, page));
    await guard(out, page);
    await guard(out, () => drawChart(chart));
  }

  async function drawChart(panel) {
    const data = await api("GET", "activity");
    const ns = "http://www.w3.org/2000/svg";
    const names = Object.keys(data.series);
    const colors = ["#ec7211", "#0073bb", "#1d8102", "#d13212", "#8c4fff", "#687078", "#f2b600", "#00a1c9"];
    const totals = new Array(60).fill(0);
    for (const n of names) data.series[n].forEach((c, i) => { totals[i] += c; });
    const peak = Math.max(1, ...totals);
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 600 160");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("id", "chart-svg");
    const stack = new Array(60).fill(0);
    names.forEach((n, j) => {
      data.series[n].forEach((count, i) => {
        if (!count) return;
        const h = (count / peak) * 150;
        const rect = document.createElementNS(ns, "rect");
        rect.setAttribute("x", String(i * 10 + 1));
        rect.setAttribute("width", "8");
        rect.setAttribute("y", String(155 - stack[i] - h));
        rect.setAttribute("height", String(h));
        rect.setAttribute("fill", colors[j % colors.length]);
        const title = document.createElementNS(ns, "title");
        title.textContent = n + ": " + count;
        rect.appendChild(title);
        svg.appendChild(rect);
        stack[i] += h;
      });
    });
    const legend = el("div", { class: "legend" }, names.map((n, j) => el("span", {}, el("span", { class: "swatch swatch-" + (j % colors.length) }), n + " (" + data.series[n].reduce((a, b) => a + b, 0) + ")")));
    panel.replaceChildren(el("h2", {}, "Calls per minute, last hour (peak " + peak + ")"), svg, legend,
      el("p", { class: "muted" }, "From " + data.start + " to now."));
  }

  // ---- routing -----------------------------------------------------------

  async function render() {
    if (!session) return signInPage();
    const hash = location.hash || "#/keys";
    const [path, query] = hash.slice(2).split("?");
    const parts = path.split("/").map(decodeURIComponent);
    for (const link of document.querySelectorAll("#nav a")) link.classList.toggle("active", hash.startsWith(link.getAttribute("href")));
    try {
      if (parts[0] === "keys" && parts[1] === "new") return createKeyPage();
      if (parts[0] === "keys" && parts[1]) return await keyPage(parts[1]);
      if (parts[0] === "buckets" && parts[1]) return await bucketPage(parts[1], parts.slice(2).join("/"));
      if (parts[0] === "buckets") return await bucketsPage();
      if (parts[0] === "object") return await objectPage(parts[1], parts.slice(2).join("/"));
      if (parts[0] === "events") return await eventsPage(query);
      if (parts[0] === "volumes") return await volumesPage();
      if (parts[0] === "exports") return await exportsPage();
      return await keysPage();
    } catch (e) {
      if (e.code !== "NotSignedIn") flash("error", String(e));
    }
  }

  window.addEventListener("hashchange", () => { flash("", ""); render(); });
  document.addEventListener("DOMContentLoaded", async () => {
    document.getElementById("signout").addEventListener("click", async () => {
      try { await api("POST", "signout"); } catch (e) { /* signed out anyway */ }
      session = null;
      signInPage("Signed out.");
    });
    try {
      session = await api("GET", "session");
      signedIn();
    } catch (e) {
      session = null;
    }
    render();
  });
})();
