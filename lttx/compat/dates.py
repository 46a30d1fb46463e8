"""
The original client's date, time and trading-day helpers, and its small
file helpers, with their names, arguments and return values.

They are methods of :class:`OldHelpers`, a mixin of :class:`lttx.compat.txl`
(scripts call them as ``tx1.get_nowtime()``).  Times are local, as the
original's.  ``judge_is_TradeDay``/``get_last_TradeDay`` need a calendar of
the Shanghai and Shenzhen exchanges: ``pip install 'lttx[calendar]'``
(``chinese-calendar``), or ``pandas_market_calendars`` as the original used;
without either they raise :class:`CalendarMissing`, saying so.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import socket
import time
from typing import Any, Callable, Optional

_DT = "%Y-%m-%d %H:%M:%S"


class CalendarMissing(ImportError):
    """No exchange calendar is installed for the trading-day helpers."""


def _shift(datestr: str, delta: datetime.timedelta) -> str:
    """``"2024-04-16 15:00:00"`` or ``"15:00:00"`` moved by ``delta``, in the same form."""
    if " " in datestr:
        return str(datetime.datetime.strptime(datestr, _DT) + delta)
    moved = datetime.datetime.strptime(datestr, "%H:%M:%S") + delta
    return str(moved).split(" ")[1]


def _calendar() -> Callable[[datetime.date], bool]:
    """``is_trading_day(date)`` from whichever calendar is installed."""
    try:
        import chinese_calendar
    except ImportError:
        pass
    else:
        # The exchanges are closed at weekends, make-up working days included.
        return lambda day: day.weekday() < 5 and not chinese_calendar.is_holiday(day)
    try:
        import pandas_market_calendars as mcal
    except ImportError:
        raise CalendarMissing(
            "judge_is_TradeDay and get_last_TradeDay need a calendar of the Chinese "
            "exchanges: pip install 'lttx[calendar]' (chinese-calendar), or "
            "pandas_market_calendars") from None
    sse = mcal.get_calendar("SSE")
    return lambda day: len(sse.schedule(start_date=str(day), end_date=str(day))) > 0


class OldHelpers:
    """The original ``txl``'s helpers that need no daemon."""

    dict_TradeDay: dict[str, bool]

    # -- now ------------------------------------------------------------------

    def get_nowdate(self) -> str:
        """Today, ``"2024-04-04"``."""
        return time.strftime("%Y-%m-%d")

    def get_nowmin(self) -> str:
        """The time of day, ``"19:00:00"``."""
        return time.strftime("%H:%M:%S")

    def get_nowtime(self) -> str:
        """Now, ``"2023-11-15 20:02:01"``."""
        return time.strftime(_DT, time.localtime())

    def get_timestamp(self) -> float:
        """Now as a Unix timestamp (a float, as ``time.time()``)."""
        return time.time()

    # -- conversions and differences ------------------------------------------

    def DatestrtingToInt(self, time_str: str) -> int:  # noqa: N802  (the original's name)
        """``"2023-10-15 20:02:01"`` -> its Unix timestamp, an int (local time)."""
        return int(datetime.datetime.strptime(time_str, _DT).timestamp())

    def IntTimeToString(self, ct: float) -> str:  # noqa: N802
        """A Unix timestamp -> ``"2023-10-15 20:02:01"`` (local time)."""
        return time.strftime(_DT, time.localtime(ct))

    def calc_datetime_day(self, str1: str, str2: str) -> int:
        """Whole days from ``str2`` to ``str1`` (``"%Y-%m-%d %H:%M:%S"`` both)."""
        return (datetime.datetime.strptime(str1, _DT) - datetime.datetime.strptime(str2, _DT)).days

    def calc_datetime_seconds(self, str1: str, str2: str) -> int:
        """The seconds part of ``str1 - str2`` (``timedelta.seconds``, as the original)."""
        return (datetime.datetime.strptime(str1, _DT)
                - datetime.datetime.strptime(str2, _DT)).seconds

    def calc_datetime_minutes(self, str1: str, str2: str) -> int:
        """:meth:`calc_datetime_seconds` in whole minutes."""
        return self.calc_datetime_seconds(str1, str2) // 60

    @staticmethod
    def calc_zdf(N1: float, N2: float) -> float:  # noqa: N803
        """The change from ``N2`` to ``N1`` in percent (the original's lacked ``self``)."""
        return (N1 - N2) / N2 * 100

    def get_day_before(self, datestr: str, N: int) -> str:  # noqa: N803
        """``"2023-10-15"`` ``N`` days earlier."""
        day = datetime.datetime.strptime(datestr, "%Y-%m-%d") - datetime.timedelta(days=N)
        return str(day.date())

    def get_day_next(self, datestr: str, N: int) -> str:  # noqa: N803
        """``"2023-10-15"`` ``N`` days later."""
        day = datetime.datetime.strptime(datestr, "%Y-%m-%d") + datetime.timedelta(days=N)
        return str(day.date())

    def get_day_cha(self, datestr: str, N: int) -> str:  # noqa: N803
        """``"2024-04-16 15:00:00"`` (or ``"15:00:00"``) ``N`` days later (earlier if < 0)."""
        return _shift(datestr, datetime.timedelta(days=N))

    def get_min_cha(self, datestr: str, N: int) -> str:  # noqa: N803
        """The same, ``N`` minutes later."""
        return _shift(datestr, datetime.timedelta(minutes=N))

    def get_second_cha(self, datestr: str, N: int) -> str:  # noqa: N803
        """The same, ``N`` seconds later."""
        return _shift(datestr, datetime.timedelta(seconds=N))

    @staticmethod
    def judge_Time_between(str1: str, str2: str) -> bool:  # noqa: N802
        """Whether now is strictly between ``"15:00:05"`` and ``"16:00:00"``."""
        return str1 < time.strftime("%H:%M:%S") < str2

    # -- trading days -----------------------------------------------------------

    def judge_is_TradeDay(self, datestr: Optional[str] = None) -> bool:  # noqa: N802
        """
        Whether ``datestr`` (``"2024-10-08"``; today if None) is a trading day of
        the Chinese A-share market.

        :raises CalendarMissing: if no calendar is installed.
        """
        if not datestr:
            datestr = time.strftime("%Y-%m-%d")
        if datestr not in self.dict_TradeDay:
            day = datetime.datetime.strptime(datestr, "%Y-%m-%d").date()
            self.dict_TradeDay[datestr] = bool(_calendar()(day))
        return self.dict_TradeDay[datestr]

    def get_last_TradeDay(self) -> str:  # noqa: N802
        """
        The latest trading day up to today, ``"2024-10-08"``.

        :raises CalendarMissing: if no calendar is installed.
        """
        is_trading_day = _calendar()
        day = datetime.date.today()
        for _ in range(60):
            if is_trading_day(day):
                return str(day)
            day -= datetime.timedelta(days=1)
        raise ValueError("no trading day in the last 60 days")

    # -- small helpers ------------------------------------------------------------

    def create_channel(self, num: int = 30) -> str:
        """A random channel name of ``num`` characters (the original's alphabet)."""
        alphabet = "abcdefghijklmnopqrstuvwxz12345678901"
        return "".join(random.choice(alphabet) for _ in range(num))

    def get_local_ip(self) -> str:
        """This machine's LAN IPv4 address ("127.0.0.1" without a network)."""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"
        finally:
            s.close()

    def save_json(self, file_name: str, obj: Any) -> None:
        """Write ``obj`` as indented UTF-8 JSON."""
        with open(file_name, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)

    def save_json_fix(self, file_name: str, dict_obj: Any) -> None:
        """:meth:`save_json`, numpy numbers and arrays written as plain ones
        (the original's was a stub)."""
        def plain(value: Any) -> Any:
            for method in ("tolist", "item"):
                if hasattr(value, method):
                    return getattr(value, method)()
            raise TypeError(f"{type(value).__name__} is not JSON serializable")

        with open(file_name, "w", encoding="utf-8") as f:
            json.dump(dict_obj, f, ensure_ascii=False, indent=2, default=plain)

    def load_json(self, file_name: str) -> Any:
        """Read a JSON file."""
        with open(file_name, encoding="utf-8") as f:
            return json.load(f)

    def mkdir(self, file_name: str) -> None:
        """Make a folder; nothing if it exists."""
        try:
            os.mkdir(file_name)
        except FileExistsError:
            pass
