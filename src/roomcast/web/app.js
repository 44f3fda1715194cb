// The page: sign-in form, header, panels and composer, wired to the chat session (chat.js).

import { Chat } from "./chat.js";
import { byId, el } from "./dom.js";
import { closeResults } from "./results.js";

const TOKEN_KEY = "roomcast.token"; // the login token, kept between visits
const NAME_KEY = "roomcast.name"; // the last name used, to fill the form
const MAX_COMPOSER_PX = 160; // the composer grows with its text up to this height

const signin = byId("signin");
const signinForm = byId("signin-form");
const nameInput = byId("signin-name");
const passwordInput = byId("signin-password");
const signinError = byId("signin-error");
const chatBox = byId("chat");
const composer = byId("composer");
const composerInput = byId("composer-input");

const chat = new Chat({
  signedIn(name, guest) {
    localStorage.setItem(NAME_KEY, name);
    byId("me-name").textContent = name;
    byId("me-kind").textContent = guest ? "guest" : "account";
    signin.hidden = true;
    chatBox.hidden = false;
    setBusy(false);
  },
  renamed(name) {
    localStorage.setItem(NAME_KEY, name);
    byId("me-name").textContent = name;
  },
  signedOut: showSignin,
  disconnected(down) {
    byId("banner").hidden = !down;
    chatBox.classList.toggle("offline", down);
  },
  showing(conv) {
    const title = byId("conv-title");
    const leave = byId("leave-button");
    closePanels();
    if (conv === null) {
      title.textContent = "No room";
      leave.hidden = true;
      composerInput.placeholder = "Join a room to talk";
      byId("composer-label").textContent = "Message";
      return;
    }
    const room = conv.kind === "room";
    title.textContent = room ? conv.title : `@${conv.title}`;
    leave.hidden = false;
    leave.textContent = room ? "Leave" : "Close";
    leave.setAttribute("aria-label", room ? `Leave ${conv.title}` : `Close ${conv.title}`);
    const where = room ? conv.title : `${conv.title} (private)`;
    composerInput.placeholder = `Message ${where}`;
    byId("composer-label").textContent = `Message ${where}`;
  },
  unread(count) {
    document.title = count > 0 ? `(${count}) roomcast` : "roomcast";
    const badge = byId("rooms-badge");
    badge.hidden = count === 0;
    badge.textContent = String(count);
  },
  roomNames(names) {
    byId("room-names").replaceChildren(...names.map((name) => el("option", { value: name })));
  },
  restore(text) {
    if (composerInput.value === "") {
      composerInput.value = text;
      fitComposer();
    }
  },
  forgetToken() {
    localStorage.removeItem(TOKEN_KEY);
  },
});

// --- signing in -------------------------------------------------------------------------------

function showSignin(message) {
  chatBox.hidden = true;
  signin.hidden = false;
  setBusy(false);
  signinError.textContent = message;
  nameInput.value = localStorage.getItem(NAME_KEY) ?? "";
  passwordInput.value = "";
  nameInput.focus();
}

function setBusy(busy) {
  for (const button of signinForm.querySelectorAll("button")) button.disabled = busy;
  byId("signin-status").textContent = busy ? "Connecting…" : "";
}

/** POST the name and password to `path` (/api/login or /api/register); the token, or throws. */
async function account(path, name, password) {
  const response = await fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name, password }),
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: the status says enough
  }
  if (!response.ok) {
    throw new Error(body?.error?.message ?? `the server answered ${response.status}`);
  }
  return body.token;
}

async function signIn(register) {
  const name = nameInput.value.trim();
  const password = passwordInput.value;
  signinError.textContent = "";
  if (name === "") {
    signinError.textContent = "Type a name.";
    nameInput.focus();
    return;
  }
  if (password === "" && register) {
    signinError.textContent = "Choose a password to create an account.";
    passwordInput.focus();
    return;
  }
  setBusy(true);
  if (password === "") {
    chat.start({ name });
    return;
  }
  try {
    const token = await account(register ? "/api/register" : "/api/login", name, password);
    localStorage.setItem(TOKEN_KEY, token);
    chat.start({ token });
  } catch (error) {
    setBusy(false);
    signinError.textContent = error.message;
  }
}

signinForm.addEventListener("submit", (event) => {
  event.preventDefault();
  signIn(false);
});
byId("register-button").addEventListener("click", () => signIn(true));
byId("signout-button").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  chat.stop();
});

// --- the chat screen ---------------------------------------------------------------------

function fitComposer() {
  composerInput.style.height = "auto";
  composerInput.style.height = `${Math.min(composerInput.scrollHeight, MAX_COMPOSER_PX)}px`;
}

composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = composerInput.value;
  if (text.trim() === "") return;
  if (chat.say(text)) {
    composerInput.value = "";
    fitComposer();
  }
});
composerInput.addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter falls through to the textarea: a new line.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    composer.requestSubmit();
  }
});
composerInput.addEventListener("input", fitComposer);

byId("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = byId("join-input");
  if (input.value.trim() !== "" && chat.join(input.value)) input.value = "";
});
byId("leave-button").addEventListener("click", () => chat.leaveCurrent());
byId("scroller").addEventListener("scroll", () => {
  if (chat.list.atTop()) chat.loadOlder();
});

// Narrow screens: the side panels slide over the conversation, one at a time.
const panels = { "toggle-rooms": "show-rooms", "toggle-members": "show-members" };

function closePanels() {
  for (const [button, panel] of Object.entries(panels)) {
    chatBox.classList.remove(panel);
    byId(button).setAttribute("aria-expanded", "false");
  }
}

for (const [button, panel] of Object.entries(panels)) {
  byId(button).addEventListener("click", () => {
    const open = !chatBox.classList.contains(panel);
    closePanels();
    chatBox.classList.toggle(panel, open);
    byId(button).setAttribute("aria-expanded", String(open));
  });
}
byId("scrim").addEventListener("click", closePanels);
document.addEventListener("visibilitychange", () => {
  if (!document.hidden) chat.seen();
});
byId("results-close").addEventListener("click", () => {
  closeResults();
  composerInput.focus();
});
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") {
    closePanels();
    closeResults();
  }
});

// --- start ----------------------------------------------------------------------------------

const token = localStorage.getItem(TOKEN_KEY);
showSignin("");
if (token !== null) {
  setBusy(true); // signing in with the token kept from the last visit
  chat.start({ token });
}
