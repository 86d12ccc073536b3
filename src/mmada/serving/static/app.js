// The mmada page: chat, text-to-image and inpainting over the server's streaming OpenAI API.
// Each denoising step redraws the whole answer (`choices[i].denoising.text`, masked positions '░') or the
// whole image (`image_generation.partial_image`), so the text resolves and the image sharpens in place.
"use strict";

const MASK = "\u2591";
const $ = (id) => document.getElementById(id);
const state = { messages: [], chatImage: null, lastImage: null, model: null };

// ---- API ------------------------------------------------------------------------------------------
function headers(json) {
  const h = {};
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function failure(response) {
  let message = response.status + " " + response.statusText;
  try { message = (await response.json()).error.message; } catch (e) { /* not JSON */ }
  if (response.status === 401) message += " (enter the API key at the top right)";
  return new Error(message);
}

// POST and read Server-Sent Events: onEvent(eventName, data) for each one.
async function stream(path, body, onEvent) {
  const isForm = body instanceof FormData;
  const response = await fetch(path, { method: "POST", headers: headers(!isForm), body: isForm ? body : JSON.stringify(body) });
  if (!response.ok) throw await failure(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (!data || data === "[DONE]") continue;
      const parsed = JSON.parse(data);
      if (parsed.error) throw new Error(parsed.error.message);
      onEvent(name, parsed);
    }
  }
}

// ---- rendering ------------------------------------------------------------------------------------
// Text with masked positions dimmed and <think>…</think> in italics; built from text nodes (no innerHTML).
function renderText(node, text) {
  node.textContent = "";
  const parts = text.split(/(\u2591+|<think>|<\/think>)/);
  let thinking = false;
  for (const part of parts) {
    if (!part) continue;
    if (part === "<think>") { thinking = true; }
    const span = document.createElement("span");
    span.textContent = part;
    if (part[0] === MASK) span.className = "mask";
    else if (thinking) span.className = "think";
    node.appendChild(span);
    if (part === "</think>") thinking = false;
  }
}

function addMessage(role, text, image) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  if (image) { const img = document.createElement("img"); img.src = image; div.appendChild(img); }
  const body = document.createElement("span");
  body.className = "body";
  renderText(body, text);
  div.appendChild(body);
  const meta = document.createElement("span");
  meta.className = "meta";
  div.appendChild(meta);
  $("messages").appendChild(div);
  return { div, body, meta };
}

// ---- chat -----------------------------------------------------------------------------------------
async function sendChat(event) {
  event.preventDefault();
  const text = $("chat-input").value.trim();
  if (!text && !state.chatImage) return;
  const content = state.chatImage
    ? [{ type: "image_url", image_url: { url: state.chatImage } }, { type: "text", text }]
    : text;
  addMessage("user", text, state.chatImage);
  state.messages.push({ role: "user", content });
  $("chat-input").value = "";
  clearChatImage();
  const reply = addMessage("assistant", MASK);
  reply.div.classList.add("forming");
  $("chat-send").disabled = true;
  let final = "", steps = 0;
  const started = performance.now();
  try {
    await stream("/v1/chat/completions", {
      model: state.model, messages: state.messages, stream: true, thinking: $("thinking").checked,
      max_tokens: Number($("chat-max-tokens").value) || undefined, temperature: Number($("chat-temperature").value),
    }, (_, chunk) => {
      const choice = chunk.choices[0];
      if (!choice) return;
      if (choice.delta && choice.delta.content) final += choice.delta.content;
      if (choice.denoising) {
        steps = choice.denoising.step + 1;
        renderText(reply.body, choice.denoising.text || MASK);
        reply.meta.textContent = "step " + steps + " / " + choice.denoising.steps;
      }
      if (choice.finish_reason) {
        renderText(reply.body, final || "(empty answer)");
        const usage = chunk.usage ? ", " + chunk.usage.completion_tokens + " tokens" : "";
        reply.meta.textContent = steps + " steps" + usage + ", " + ((performance.now() - started) / 1000).toFixed(1) + " s";
        reply.div.dataset.final = "true";
      }
    });
    state.messages.push({ role: "assistant", content: final });
  } catch (err) {
    reply.body.textContent = err.message;
    reply.div.classList.add("error");
    state.messages.pop();
  } finally {
    reply.div.classList.remove("forming");
    $("chat-send").disabled = false;
  }
}

function readFile(input) {
  return new Promise((resolve, reject) => {
    const file = input.files[0];
    if (!file) { resolve(null); return; }
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function clearChatImage() {
  state.chatImage = null;
  $("chat-image").value = "";
  $("chat-image-preview").hidden = true;
}

// ---- text to image --------------------------------------------------------------------------------
async function sendT2I(event) {
  event.preventDefault();
  const steps = Number($("t2i-steps").value) || 12;
  const body = {
    model: state.model, prompt: $("t2i-prompt").value, stream: true, partial_images: steps,
    response_format: "b64_json", steps, guidance_scale: Number($("t2i-guidance").value),
  };
  if ($("t2i-seed").value !== "") body.seed = Number($("t2i-seed").value);
  $("t2i-send").disabled = true;
  $("t2i-steps-strip").textContent = "";
  $("t2i-image").dataset.final = "";
  $("t2i-status").textContent = "waiting…";
  try {
    await stream("/v1/images/generations", body, (name, ev) => showImage("t2i", name, ev, steps));
  } catch (err) {
    $("t2i-status").textContent = err.message;
  } finally {
    $("t2i-send").disabled = false;
  }
}

function showImage(prefix, name, ev, steps) {
  const src = "data:image/png;base64," + ev.b64_json;
  $(prefix + "-image").src = src;
  if (name.endsWith(".partial_image")) {
    $(prefix + "-status").textContent = "step " + (ev.step + 1) + " / " + steps;
    if (prefix === "t2i") {
      const img = document.createElement("img");
      img.src = src;
      img.title = "step " + (ev.step + 1);
      $("t2i-steps-strip").appendChild(img);
    }
  } else if (name.endsWith(".completed")) {
    $(prefix + "-status").textContent = "done";
    $(prefix + "-image").dataset.final = "true";
    state.lastImage = src;
  }
}

// ---- inpainting -----------------------------------------------------------------------------------
function loadIntoCanvas(src) {
  const img = new Image();
  img.onload = () => {
    const canvas = $("inpaint-canvas");
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    const side = Math.min(img.width, img.height);  // the centred square the model sees
    ctx.drawImage(img, (img.width - side) / 2, (img.height - side) / 2, side, side, 0, 0, canvas.width, canvas.height);
    clearMask();
  };
  img.src = src;
}

function clearMask() {
  const mask = $("inpaint-mask");
  mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
}

function paint(event) {
  if (!(event.buttons & 1)) return;
  const mask = $("inpaint-mask");
  const box = mask.getBoundingClientRect();
  const ctx = mask.getContext("2d");
  ctx.fillStyle = "rgba(47, 111, 222, 1)";
  ctx.beginPath();
  const x = (event.clientX - box.left) * mask.width / box.width;
  const y = (event.clientY - box.top) * mask.height / box.height;
  ctx.arc(x, y, Number($("inpaint-brush").value) / 2, 0, 2 * Math.PI);
  ctx.fill();
}

// OpenAI's convention: the mask's transparent pixels are repainted.
function maskBlob() {
  const painted = $("inpaint-mask");
  const out = document.createElement("canvas");
  out.width = painted.width; out.height = painted.height;
  const ctx = out.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, out.width, out.height);
  ctx.globalCompositeOperation = "destination-out";
  ctx.drawImage(painted, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

async function sendInpaint(event) {
  event.preventDefault();
  const form = new FormData();
  const image = await new Promise((resolve) => $("inpaint-canvas").toBlob(resolve, "image/png"));
  form.append("image", image, "image.png");
  form.append("mask", await maskBlob(), "mask.png");
  form.append("prompt", $("inpaint-prompt").value);
  form.append("stream", "true");
  form.append("partial_images", "12");
  if (state.model) form.append("model", state.model);
  $("inpaint-send").disabled = true;
  $("inpaint-status").textContent = "waiting…";
  try {
    await stream("/v1/images/edits", form, (name, ev) => showImage("inpaint", name, ev, 12));
  } catch (err) {
    $("inpaint-status").textContent = err.message;
  } finally {
    $("inpaint-send").disabled = false;
  }
}

// ---- wiring ---------------------------------------------------------------------------------------
function wire() {
  $("api-key").value = localStorage.getItem("mmada-api-key") || "";
  $("api-key").addEventListener("change", () => { localStorage.setItem("mmada-api-key", $("api-key").value); loadModel(); });
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      document.querySelectorAll(".tab, .panel").forEach((n) => n.classList.remove("active"));
      tab.classList.add("active");
      $(tab.dataset.tab).classList.add("active");
    });
  }
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
  });
  $("chat-image").addEventListener("change", async () => {
    state.chatImage = await readFile($("chat-image"));
    $("chat-image-preview").src = state.chatImage || "";
    $("chat-image-preview").hidden = !state.chatImage;
  });
  $("chat-clear").addEventListener("click", () => { state.messages = []; $("messages").textContent = ""; });
  $("t2i-form").addEventListener("submit", sendT2I);
  $("inpaint-form").addEventListener("submit", sendInpaint);
  $("inpaint-file").addEventListener("change", async () => { const src = await readFile($("inpaint-file")); if (src) loadIntoCanvas(src); });
  $("inpaint-use-last").addEventListener("click", () => { if (state.lastImage) loadIntoCanvas(state.lastImage); });
  $("inpaint-clear").addEventListener("click", clearMask);
  $("inpaint-mask").addEventListener("pointerdown", paint);
  $("inpaint-mask").addEventListener("pointermove", paint);
  loadModel();
}

async function loadModel() {
  try {
    const response = await fetch("/v1/models", { headers: headers(false) });
    if (!response.ok) throw await failure(response);
    state.model = (await response.json()).data[0].id;
    $("model").textContent = state.model;
  } catch (err) {
    $("model").textContent = "(" + err.message + ")";
  }
}

wire();
