// Progressive enhancement only: click a column header to sort a table. The page is complete without this script.
(function () {
  "use strict";
  function key(cell, numeric) {
    if (!cell) { return numeric ? Infinity : ""; }
    var raw = cell.getAttribute("data-value");
    if (numeric) {
      var value = parseFloat(raw !== null ? raw : cell.textContent.replace(/[^0-9.eE+-]/g, ""));
      return isNaN(value) ? Infinity : value;
    }
    return (raw !== null ? raw : cell.textContent).trim().toLowerCase();
  }
  function sort(th) {
    var table = th.closest("table");
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var numeric = th.getAttribute("data-sort") === "num";
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    // a table with one tbody per entry (a row and its notes line) sorts the tbodies, otherwise the rows
    var grouped = table.tBodies.length > 1;
    var parent = grouped ? table : table.tBodies[0];
    var units = Array.prototype.slice.call(grouped ? table.tBodies : table.tBodies[0].rows);
    function first(unit) { return grouped ? unit.rows[0] : unit; }
    units.sort(function (a, b) {
      var x = key(first(a).cells[index], numeric), y = key(first(b).cells[index], numeric);
      var order = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? order : -order;
    });
    units.forEach(function (unit) { parent.appendChild(unit); });
    Array.prototype.forEach.call(th.parentNode.children, function (other) { other.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable th[data-sort]"), function (th) {
    th.tabIndex = 0;
    th.title = "Sort by this column";
    th.addEventListener("click", function () { sort(th); });
    th.addEventListener("keydown", function (event) {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sort(th); }
    });
  });
  document.documentElement.className += " js";
})();
