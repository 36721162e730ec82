// tongban /docs: starts Swagger UI (vendored from npm, see README.md beside this file) on
// this gateway's own /openapi.json. A separate file so the page needs no inline script.
"use strict";

(function () {
  // The page may talk only to the gateway that served it (CSP connect-src 'self'). The
  // document names the gateway by its public URL, which need not be the address this page
  // was reached at (a proxy, a test on loopback), so "Try it out" and the OAuth token
  // request go to this origin, at the documented paths.
  function here(url) {
    const u = new URL(url, window.location.href);
    return window.location.origin + u.pathname + u.search;
  }

  function sameGateway(text) {
    let doc;
    try {
      doc = JSON.parse(text);
    } catch (_) {
      return text;
    }
    for (const server of doc.servers || []) server.url = here(server.url);
    const schemes = (doc.components && doc.components.securitySchemes) || {};
    for (const scheme of Object.values(schemes)) {
      for (const flow of Object.values((scheme && scheme.flows) || {})) {
        for (const key of ["tokenUrl", "authorizationUrl", "refreshUrl"]) {
          if (typeof flow[key] === "string") flow[key] = here(flow[key]);
        }
      }
    }
    return JSON.stringify(doc);
  }

  const SameGatewayPlugin = () => ({
    statePlugins: {
      spec: {
        wrapActions: {
          updateSpec: (original) => (spec) =>
            original(typeof spec === "string" ? sameGateway(spec) : spec),
        },
      },
    },
  });

  window.ui = window.SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    presets: [window.SwaggerUIBundle.presets.apis],
    plugins: [SameGatewayPlugin],
    layout: "BaseLayout",
    deepLinking: true,
    docExpansion: "list",
    filter: true,
    displayRequestDuration: true,
    showCommonExtensions: true,
    // Never ask validator.swagger.io (or any other host) about the document, never take a
    // document URL from the query string, never keep a token in localStorage.
    validatorUrl: null,
    queryConfigEnabled: false,
    persistAuthorization: false,
    withCredentials: false,
  });
})();
