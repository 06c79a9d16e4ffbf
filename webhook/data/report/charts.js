// Draws every chart whose data the page holds in <script type="application/json" class="chart-data">.
// The data is text (JSON.parse), never markup; Chart.js draws labels on a canvas as text.
(function () {
  "use strict";
  var palette = ["#c0392b", "#2980b9", "#27ae60", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#f39c12", "#34495e"];
  var kinds = {
    timeline: { x: "time (UTC)", y: "refusals" },
    products: { x: "product", y: "requests" }
  };
  var nodes = document.querySelectorAll("script.chart-data");
  for (var i = 0; i < nodes.length; i++) {
    var spec = JSON.parse(nodes[i].textContent);
    var canvas = document.getElementById(spec.id);
    var axes = kinds[spec.kind];
    new Chart(canvas, {
      type: "bar",
      data: {
        labels: spec.labels,
        datasets: spec.series.map(function (s, n) {
          return { label: s.label, data: s.data, backgroundColor: s.color || palette[n % palette.length] };
        })
      },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        plugins: { legend: { position: "bottom" } },
        scales: {
          x: { stacked: true, title: { display: true, text: axes.x } },
          y: { stacked: true, beginAtZero: true, title: { display: true, text: axes.y }, ticks: { precision: 0 } }
        }
      }
    });
  }
  document.body.setAttribute("data-charts-ready", String(nodes.length));
})();
