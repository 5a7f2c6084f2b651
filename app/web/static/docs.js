// Starts Swagger UI or ReDoc on the page's OpenAPI URL (no inline script: the CSP allows only files).
"use strict";
(function () {
  var sw = document.getElementById("swagger-ui");
  if (sw && window.SwaggerUIBundle) {
    window.ui = window.SwaggerUIBundle({
      url: sw.dataset.openapiUrl,
      dom_id: "#swagger-ui",
      layout: "BaseLayout",
      deepLinking: true,
      presets: [window.SwaggerUIBundle.presets.apis],
    });
  }
  var rd = document.getElementById("redoc");
  if (rd && window.Redoc) {
    window.Redoc.init(rd.dataset.openapiUrl, {}, rd);
  }
})();
