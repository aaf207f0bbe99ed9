"""Token usage per day (per user, per model) of stored answers, and its stacked bar
charts laid out as plain numbers for the template's SVG. Reads only."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from django.db.models import Count, F, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from chat.models import Message

UNKNOWN_USER = "(unknown)"
OTHER = "other"
# Colour-blind-safe palette (Okabe-Ito), then grey for "other".
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
OTHER_COLOUR = "#999999"
MAX_SERIES = len(PALETTE)

CHART_W, CHART_H = 880, 260
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 64, 8, 12, 34


@dataclass
class Totals:
    prompt: int = 0
    completion: int = 0
    total: int = 0
    answers: int = 0

    def add(self, row: dict) -> None:
        self.prompt += row["prompt"] or 0
        self.completion += row["completion"] or 0
        self.total += row["total"] or 0
        self.answers += row["answers"]


@dataclass
class Chart:
    """A stacked bar chart as plain numbers and strings for the template's SVG."""

    title: str
    width: int = CHART_W
    height: int = CHART_H
    bars: list[dict[str, str]] = field(default_factory=list)
    ticks: list[dict[str, str]] = field(default_factory=list)
    labels: list[dict[str, str]] = field(default_factory=list)
    legend: list[dict[str, str]] = field(default_factory=list)
    baseline: str = ""
    plot_left: str = str(MARGIN_L)
    plot_right: str = str(CHART_W - MARGIN_R)
    axis_x: str = str(MARGIN_L - 6)
    label_y: str = str(CHART_H - MARGIN_B + 16)


@dataclass
class Usage:
    days: list[date]
    start: date
    end: date
    total: Totals
    by_user: list[tuple[str, Totals]]
    by_model: list[tuple[str, Totals]]
    user_chart: Chart
    model_chart: Chart


def usage(*, days: int = 30, now: datetime | None = None) -> Usage:
    """Tokens of stored answers per day, user (who asked) and model, for the last
    `days` days including today (UTC)."""
    end = timezone.localdate(now or timezone.now())
    start = end - timedelta(days=days - 1)
    rows = list(
        Message.objects.filter(
            role=Message.Sender.ASSISTANT,
            created_at__date__gte=start,
            created_at__date__lte=end,
            total_tokens__isnull=False,
        )
        .annotate(day=TruncDate("created_at"), username=F("reply_to__author__username"))
        .values("day", "model", "username")
        .annotate(
            prompt=Sum("prompt_tokens"),
            completion=Sum("completion_tokens"),
            total=Sum("total_tokens"),
            answers=Count("pk"),
        )
        .order_by()
    )
    total = Totals()
    per_user: dict[str, Totals] = defaultdict(Totals)
    per_model: dict[str, Totals] = defaultdict(Totals)
    user_day: dict[tuple[str, date], int] = defaultdict(int)
    model_day: dict[tuple[str, date], int] = defaultdict(int)
    for row in rows:
        user = row["username"] or UNKNOWN_USER
        model = row["model"] or UNKNOWN_USER
        total.add(row)
        per_user[user].add(row)
        per_model[model].add(row)
        user_day[user, row["day"]] += row["total"] or 0
        model_day[model, row["day"]] += row["total"] or 0
    day_list = [start + timedelta(days=i) for i in range(days)]
    by_user = sorted(per_user.items(), key=lambda kv: (-kv[1].total, kv[0]))
    by_model = sorted(per_model.items(), key=lambda kv: (-kv[1].total, kv[0]))
    return Usage(
        days=day_list,
        start=start,
        end=end,
        total=total,
        by_user=by_user,
        by_model=by_model,
        user_chart=stacked_chart("Tokens per day by user", day_list, by_user, user_day),
        model_chart=stacked_chart("Tokens per day by model", day_list, by_model, model_day),
    )


def _nice_max(value: int) -> int:
    """A round axis maximum at or above value (1, 2, 2.5 or 5 times a power of ten)."""
    if value <= 0:
        return 10
    power = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return int(step * power)
    return 10 * power  # pragma: no cover


def _thousands(value: int) -> str:
    return f"{value:,}"


def stacked_chart(
    title: str,
    days: list[date],
    series: list[tuple[str, Totals]],
    per_day: dict[tuple[str, date], int],
) -> Chart:
    """Lay out a stacked bar per day: the biggest series first, the rest as "other"."""
    chart = Chart(title=title)
    names = [name for name, _ in series[:MAX_SERIES]]
    colours = dict(zip(names, PALETTE, strict=False))
    has_other = len(series) > MAX_SERIES
    if has_other:
        colours[OTHER] = OTHER_COLOUR

    def key(name: str) -> str:
        return name if name in names else OTHER

    stacks: dict[date, dict[str, int]] = {d: defaultdict(int) for d in days}
    for (name, day), tokens in per_day.items():
        if day in stacks:
            stacks[day][key(name)] += tokens
    top = _nice_max(max((sum(s.values()) for s in stacks.values()), default=0))
    plot_w = CHART_W - MARGIN_L - MARGIN_R
    plot_h = CHART_H - MARGIN_T - MARGIN_B
    base_y = MARGIN_T + plot_h
    slot = plot_w / max(len(days), 1)
    bar_w = max(slot * 0.7, 1.0)
    for i in range(5):
        value = top * i / 4
        y = base_y - plot_h * i / 4
        chart.ticks.append({"y": f"{y:.1f}", "label": _thousands(int(value))})
    for index, day in enumerate(days):
        x = MARGIN_L + index * slot + (slot - bar_w) / 2
        y = float(base_y)
        for name in [*names, OTHER] if has_other else names:
            tokens = stacks[day].get(name, 0)
            if not tokens:
                continue
            h = plot_h * tokens / top
            y -= h
            chart.bars.append(
                {
                    "x": f"{x:.1f}",
                    "y": f"{y:.1f}",
                    "w": f"{bar_w:.1f}",
                    "h": f"{h:.1f}",
                    "fill": colours[name],
                    "label": f"{day.isoformat()} · {name}: {_thousands(tokens)} tokens",
                }
            )
        if index % 5 == 0 or index == len(days) - 1:
            chart.labels.append({"x": f"{x + bar_w / 2:.1f}", "text": day.strftime("%b %d")})
    chart.baseline = f"{base_y:.1f}"
    chart.legend = [{"name": name, "fill": colour} for name, colour in colours.items()]
    return chart
