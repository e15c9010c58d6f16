// Runs the seed's ChatService class (TypeScript, unchanged) in Node the way a browser page would,
// against a running gateway, and prints what every call returned as JSON on stdout.
//
// Input (JSON on stdin):
//   {
//     "gateway_url":  "http://127.0.0.1:PORT",   // the "page origin" relative URLs resolve against
//     "source":       "<the ```typescript block of chat-api.md, verbatim>",
//     "first_token":  "<JWT of the user who owns the data>",
//     "second_token": "<JWT of another user>",
//     "title":        "<conversation title>",
//     "content":      "<message content>",
//     "query":        "<search query that matches content>"
//   }
//
// Output (JSON on stdout): typescript version, type-check and transpile diagnostics, the agent
// used, and `calls`: one record per call of the class, each with the arguments, the HTTP
// requests the call made (method, URL as written by the class, resolved URL, status) and either
// `result` (what the method returned) or `error` (what it threw).
//
// Browser emulation: `localStorage` is an in-memory Storage holding the token under 'token'
// (what the class reads), and `fetch` resolves the class's relative URLs ('/chat/...') against
// the gateway base URL, as a browser resolves them against the page's URL.

import ts from 'typescript';

const MODULE_NAME = 'chat-service.ts';

async function readStdin() {
    const chunks = [];
    for await (const chunk of process.stdin) chunks.push(chunk);
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

// --- browser globals -------------------------------------------------------------------------

class MemoryStorage {
    #items = new Map();
    get length() { return this.#items.size; }
    key(index) { return [...this.#items.keys()][index] ?? null; }
    getItem(key) { return this.#items.has(String(key)) ? this.#items.get(String(key)) : null; }
    setItem(key, value) { this.#items.set(String(key), String(value)); }
    removeItem(key) { this.#items.delete(String(key)); }
    clear() { this.#items.clear(); }
}

function installBrowserGlobals(pageUrl, requestLog) {
    const nodeFetch = globalThis.fetch;
    globalThis.localStorage = new MemoryStorage();
    globalThis.fetch = async (input, init = {}) => {
        const written = typeof input === 'string' ? input : String(input.url ?? input);
        const resolved = new URL(written, pageUrl).href;
        const entry = { method: (init.method ?? 'GET').toUpperCase(), url: written, resolved };
        requestLog.push(entry);
        const response = await nodeFetch(resolved, init);
        entry.status = response.status;
        entry.content_type = response.headers.get('content-type');
        return response;
    };
}

// --- TypeScript: type-check, then transpile the seed's class ---------------------------------

const CHECK_OPTIONS = {
    strict: true,
    noEmit: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    lib: ['lib.es2022.d.ts', 'lib.dom.d.ts'],
    types: [],
    skipLibCheck: true,
};

function formatDiagnostics(diagnostics) {
    return diagnostics.map((d) => {
        const text = ts.flattenDiagnosticMessageText(d.messageText, '\n');
        if (!d.file || d.start === undefined) return `TS${d.code}: ${text}`;
        const { line, character } = d.file.getLineAndCharacterOfPosition(d.start);
        return `${d.file.fileName}:${line + 1}:${character + 1} TS${d.code}: ${text}`;
    });
}

function typeCheck(source) {
    const host = ts.createCompilerHost(CHECK_OPTIONS, true);
    const getSourceFile = host.getSourceFile.bind(host);
    host.getSourceFile = (fileName, languageVersion, ...rest) =>
        fileName === MODULE_NAME
            ? ts.createSourceFile(fileName, source, languageVersion, true)
            : getSourceFile(fileName, languageVersion, ...rest);
    const fileExists = host.fileExists.bind(host);
    host.fileExists = (fileName) => fileName === MODULE_NAME || fileExists(fileName);
    const readFile = host.readFile.bind(host);
    host.readFile = (fileName) => (fileName === MODULE_NAME ? source : readFile(fileName));
    const program = ts.createProgram([MODULE_NAME], CHECK_OPTIONS, host);
    return formatDiagnostics(ts.getPreEmitDiagnostics(program));
}

async function loadChatService(source) {
    const output = ts.transpileModule(source, {
        fileName: MODULE_NAME,
        reportDiagnostics: true,
        compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext },
    });
    const url = 'data:text/javascript;base64,' + Buffer.from(output.outputText).toString('base64');
    const module = await import(url);
    return { ChatService: module.ChatService, diagnostics: formatDiagnostics(output.diagnostics ?? []) };
}

// --- the scenario ----------------------------------------------------------------------------

async function main() {
    const config = await readStdin();
    const pageUrl = new URL('/', config.gateway_url).href;
    const requestLog = [];
    installBrowserGlobals(pageUrl, requestLog);

    const out = {
        node_version: process.version,
        typescript_version: ts.version,
        page_url: pageUrl,
        type_diagnostics: typeCheck(config.source),
    };
    const { ChatService, diagnostics } = await loadChatService(config.source);
    out.transpile_diagnostics = diagnostics;
    out.class_methods = Object.getOwnPropertyNames(ChatService.prototype).filter(
        (name) => name !== 'constructor',
    );
    out.calls = {};

    async function record(key, service, method, args) {
        const first = requestLog.length;
        const entry = { method, args };
        try {
            entry.result = await service[method](...args);
        } catch (error) {
            entry.error = `${error?.name ?? 'Error'}: ${error?.message ?? String(error)}`;
        }
        entry.requests = requestLog.slice(first);
        out.calls[key] = entry;
        return entry;
    }

    // The first user, logged in: the page stored their token where the class reads it.
    localStorage.setItem('token', config.first_token);
    const service = new ChatService();

    // Setup, not a class method: the default agent, as a page would list agents for a picker.
    let agentId = 1;
    const agents = await fetch('/chat/agents', {
        headers: { Authorization: `Bearer ${localStorage.getItem('token')}` },
    });
    out.agents_status = agents.status;
    if (agents.ok) {
        const list = (await agents.json())?.data?.agents ?? [];
        const chosen = list.find((agent) => agent.is_default) ?? list[0];
        if (chosen) agentId = chosen.id;
    }
    out.agent_id = agentId;

    const created = await record('createConversation', service, 'createConversation', [
        config.title,
        agentId,
    ]);
    const conversationId = created.result?.data?.conversation_id;
    out.conversation_id = conversationId ?? null;
    if (conversationId === undefined) {
        process.stdout.write(JSON.stringify(out));
        return;
    }
    await record('sendMessage', service, 'sendMessage', [conversationId, config.content]);
    await record('getConversations', service, 'getConversations', []);
    await record('getMessages', service, 'getMessages', [conversationId]);
    await record('searchMessages', service, 'searchMessages', [config.query]);
    // Not built yet: recorded, whatever they answer.
    await record('getAnalytics', service, 'getAnalytics', []);
    await record('generateAIResponse', service, 'generateAIResponse', [
        conversationId,
        config.content,
        agentId,
    ]);

    // Another user logs in on the same browser: same class, their token.
    localStorage.setItem('token', config.second_token);
    const other = new ChatService();
    await record('second.getMessages', other, 'getMessages', [conversationId]);
    await record('second.searchMessages', other, 'searchMessages', [config.query]);

    process.stdout.write(JSON.stringify(out));
}

main().catch((error) => {
    process.stderr.write(`${error?.stack ?? error}\n`);
    process.exit(1);
});
