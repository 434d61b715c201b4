/* Small niceties only: every page is complete without this script.
   Click a header of a table with class "sortable" to sort its rows on this page. */
(function () {
  "use strict";
  function key(cell) {
    var text = (cell && cell.textContent || "").trim().replace(/[,%\u00b0]/g, "");
    var num = parseFloat(text);
    return isNaN(num) || !/^[-+]?[0-9.]+(e[-+]?[0-9]+)?$/i.test(text) ? text.toLowerCase() : num;
  }
  function sortBy(table, column, th) {
    var body = table.tBodies[0];
    if (!body) { return; }
    var rows = Array.prototype.slice.call(body.rows);
    var descending = th.getAttribute("data-order") !== "desc";
    rows.sort(function (a, b) {
      var x = key(a.cells[column]), y = key(b.cells[column]);
      if (typeof x !== typeof y) { x = String(x); y = String(y); }
      return (x < y ? -1 : x > y ? 1 : 0) * (descending ? -1 : 1);
    });
    th.setAttribute("data-order", descending ? "desc" : "asc");
    rows.forEach(function (row) { body.appendChild(row); });
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var head = table.tHead;
    if (!head) { return; }
    Array.prototype.forEach.call(head.rows[0].cells, function (th, column) {
      th.title = "sort this page by " + th.textContent.trim();
      th.addEventListener("click", function () { sortBy(table, column, th); });
    });
  });
}());
