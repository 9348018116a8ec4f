"""Synthetic tool-use conversations whose token roles are known, to score the method against.

Every sample asks for one call from a small tool list. The assistant answer mixes template text
(preface phrases, brackets, argument names, quotes, `=`, commas) with values that had to be read
from the input (the user request, or a tool result in the multi-turn pattern). The chosen tool's
name and those values are recorded as `reasoning_spans`; everything else is boilerplate. Fixed
phrases are drawn from a small set per tool family so the template is predictable but not one
constant string.

Answer variants: a call alone, a preface then the call, a prose restatement of the values then
the call, and (about a quarter of samples) call -> tool result -> final answer restating values.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from string import Formatter
from typing import Any

from tokenweight.samples import Sample
from tokenweight.sources.tools_text import system_with_tools

MULTI_TURN_SHARE = 0.25
SYSTEM_TEXTS = (
    None,
    "You are a helpful assistant.",
    "You are a concise assistant that uses tools when they help.",
)

CITIES = ("Paris", "Tokyo", "Berlin", "Lisbon", "Nairobi", "Toronto", "Sydney", "Madrid",
          "Seoul", "Chicago", "Cairo", "Oslo", "Lima", "Dublin", "Mumbai", "Prague")
TIMES = ("08:00", "09:30", "11:15", "12:30", "13:45", "15:00", "18:00", "19:30", "20:45")
CONDITIONS = ("sunny", "cloudy", "light rain", "windy", "foggy", "clear", "snowing")
RESTAURANTS = ("Luigi's", "The Blue Door", "Sakura House", "El Toro", "Green Table",
               "Maison Rouge", "Bombay Spice", "Harbor Grill")
EMAILS = ("alice.chen@example.com", "bob.martin@example.org", "priya.natarajan@example.com",
          "tom.okafor@example.net", "sara.lind@example.com", "diego.ruiz@example.org")
SUBJECTS = ("Meeting notes", "Invoice for March", "Weekend plans", "Draft proposal",
            "Travel itinerary", "Budget update")
BODIES = ("The slides are attached.", "Can we move this to Friday?", "Thanks for your help today.",
          "Please review before noon.")
EVENTS = ("Team standup", "Quarterly review", "Dentist appointment", "Lunch with Maya",
          "Project kickoff", "Yoga class")
REMINDERS = ("call the dentist", "pick up the dry cleaning", "renew the passport",
             "water the plants", "submit the expense report", "book the train tickets")
SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "GOOGL", "META", "IBM", "KO", "JPM")
CURRENCIES = ("USD", "EUR", "JPY", "GBP", "CHF", "CAD", "AUD", "INR")
QUERIES = ("best hiking trails near Denver", "how to repot a fiddle leaf fig",
           "electric cars with the longest range", "history of the printing press",
           "easy vegetarian lasagna recipe", "how do heat pumps work")
SEARCH_TITLES = ("A Beginner's Guide", "Top 10 Picks for 2024", "Everything You Need to Know",
                 "Explained in Five Minutes")
UNIT_FACTORS = {("kilometers", "miles"): 0.621371, ("miles", "kilometers"): 1.609344,
                ("kilograms", "pounds"): 2.204623, ("pounds", "kilograms"): 0.453592,
                ("liters", "gallons"): 0.264172, ("meters", "feet"): 3.28084}
TRANSLATIONS = {
    "Where is the train station?": {"French": "Où est la gare ?", "Spanish": "¿Dónde está la estación de tren?",
                                    "German": "Wo ist der Bahnhof?", "Italian": "Dov'è la stazione?"},
    "Thank you for your help": {"French": "Merci pour votre aide", "Spanish": "Gracias por tu ayuda",
                                "German": "Danke für deine Hilfe", "Italian": "Grazie per il tuo aiuto"},
    "I would like a coffee": {"French": "Je voudrais un café", "Spanish": "Quisiera un café",
                              "German": "Ich hätte gern einen Kaffee", "Italian": "Vorrei un caffè"},
    "See you tomorrow": {"French": "À demain", "Spanish": "Hasta mañana",
                         "German": "Bis morgen", "Italian": "A domani"},
}
LANGUAGES = ("French", "Spanish", "German", "Italian")
TRAVEL_MODES = ("driving", "walking", "transit", "cycling")
OPERATIONS = {"add": lambda a, b: a + b, "subtract": lambda a, b: a - b,
              "multiply": lambda a, b: a * b, "divide": lambda a, b: round(a / b, 4)}


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    required: bool = True
    enum: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Family:
    """One tool and the ways a user asks for it and an assistant answers.

    Templates use `{field}` placeholders. A request template's fields decide which arguments
    the call carries, so each must name every required parameter. Prose templates may use the
    call's arguments; final templates may also use the tool result's fields.
    """

    name: str
    description: str
    params: tuple[Param, ...]
    values: Callable[[random.Random], dict[str, Any]]
    result: Callable[[random.Random, dict[str, Any]], dict[str, Any]]
    requests: tuple[str, ...]
    prefaces: tuple[str, ...]
    prose: tuple[str, ...]
    finals: tuple[str, ...]

    def tool(self) -> dict:
        properties = {}
        for param in self.params:
            properties[param.name] = {"type": param.type}
            if param.enum:
                properties[param.name]["enum"] = list(param.enum)
        required = [param.name for param in self.params if param.required]
        schema = {"type": "object", "properties": properties, "required": required}
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": schema}}


def _date(rng: random.Random) -> str:
    return f"{rng.choice((2024, 2025))}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _money(rng: random.Random) -> float | int:
    return rng.choice((rng.randint(10, 5000), round(rng.uniform(10, 2000), 2)))


def _units(rng: random.Random) -> dict[str, Any]:
    source, target = rng.choice(sorted(UNIT_FACTORS))
    return {"value": rng.choice((rng.randint(1, 500), round(rng.uniform(1, 100), 1))),
            "from_unit": source, "to_unit": target}


def _phrase(rng: random.Random) -> dict[str, Any]:
    target, source = rng.sample(LANGUAGES, 2)
    return {"text": rng.choice(sorted(TRANSLATIONS)), "target_language": target,
            "source_language": "English" if rng.random() < 0.7 else source}


def _two_currencies(rng: random.Random) -> dict[str, Any]:
    source, target = rng.sample(CURRENCIES, 2)
    return {"amount": _money(rng), "from_currency": source, "to_currency": target}


def _arithmetic(rng: random.Random) -> dict[str, Any]:
    return {"operation": rng.choice(sorted(OPERATIONS)), "a": rng.randint(2, 999), "b": rng.randint(2, 999)}


FAMILIES = (
    Family(
        "get_weather", "Get the current weather for a city.",
        (Param("city", "string"), Param("unit", "string", False, ("celsius", "fahrenheit"))),
        lambda rng: {"city": rng.choice(CITIES), "unit": rng.choice(("celsius", "fahrenheit"))},
        lambda rng, args: {"temperature": rng.randint(-5, 35), "condition": rng.choice(CONDITIONS)},
        ("What's the weather like in {city} right now?",
         "Can you tell me the current weather in {city} in {unit}?",
         "I'm heading to {city} today. How warm is it there, in {unit} please?",
         "Weather for {city}?"),
        ("Sure, I'll check that for you.", "Let me look up the weather.", "Checking the forecast now."),
        ("Looking up the current weather in {city}.", "Getting the weather for {city} in {unit}."),
        ("It's {temperature} degrees and {condition} in {city} right now.",
         "Currently {condition} in {city}, at {temperature} degrees {unit}."),
    ),
    Family(
        "search_flights", "Search for flights between two cities on a date.",
        (Param("origin", "string"), Param("destination", "string"), Param("date", "string"),
         Param("passengers", "integer", False)),
        lambda rng: dict(zip(("origin", "destination"), rng.sample(CITIES, 2)),
                         date=_date(rng), passengers=rng.randint(1, 6)),
        lambda rng, args: {"flight": f"{rng.choice(('AF', 'LH', 'BA', 'UA', 'NH'))}{rng.randint(100, 999)}",
                           "price": rng.randint(90, 1400), "departure": rng.choice(TIMES)},
        ("Find me flights from {origin} to {destination} on {date}.",
         "I need to fly {origin} to {destination} on {date} for {passengers} people.",
         "Are there any flights from {origin} to {destination} on {date}? We are {passengers}."),
        ("Let me search for flights.", "I'll look for available flights.", "Searching flights now."),
        ("Searching flights from {origin} to {destination} on {date}.",
         "Looking for flights {origin} to {destination} on {date} for {passengers}."),
        ("The best option is {flight}, leaving at {departure} for {price} USD.",
         "I found {flight} from {origin} to {destination}, departing {departure}, at {price} USD."),
    ),
    Family(
        "book_restaurant", "Reserve a table at a restaurant.",
        (Param("restaurant", "string"), Param("party_size", "integer"), Param("date", "string"),
         Param("time", "string")),
        lambda rng: {"restaurant": rng.choice(RESTAURANTS), "party_size": rng.randint(2, 10),
                     "date": _date(rng), "time": rng.choice(TIMES)},
        lambda rng, args: {"confirmation": f"R{rng.randint(10000, 99999)}"},
        ("Book a table for {party_size} at {restaurant} on {date} at {time}.",
         "Can you reserve {restaurant} for {party_size} people, {date} at {time}?",
         "We'd like dinner at {restaurant} on {date}, {time}, party of {party_size}."),
        ("Sure, I'll make that reservation.", "Happy to book that for you.", "Let me reserve a table."),
        ("Booking a table for {party_size} at {restaurant} on {date}.",
         "Reserving {restaurant} for {party_size} at {time} on {date}."),
        ("Your table at {restaurant} is booked. Confirmation code: {confirmation}.",
         "Done! Reservation {confirmation} for {party_size} on {date} at {time}."),
    ),
    Family(
        "convert_units", "Convert a quantity from one unit to another.",
        (Param("value", "number"), Param("from_unit", "string"), Param("to_unit", "string")),
        _units,
        lambda rng, args: {"result": round(args["value"] * UNIT_FACTORS[args["from_unit"], args["to_unit"]], 2)},
        ("How many {to_unit} is {value} {from_unit}?",
         "Convert {value} {from_unit} to {to_unit}, please.",
         "I have {value} {from_unit}. What is that in {to_unit}?"),
        ("Let me convert that.", "I'll do the conversion.", "Converting now."),
        ("Converting {value} {from_unit} to {to_unit}.",),
        ("{value} {from_unit} is about {result} {to_unit}.", "That comes to {result} {to_unit}."),
    ),
    Family(
        "get_stock_price", "Get the latest price of a stock.",
        (Param("symbol", "string"), Param("exchange", "string", False, ("NASDAQ", "NYSE"))),
        lambda rng: {"symbol": rng.choice(SYMBOLS), "exchange": rng.choice(("NASDAQ", "NYSE"))},
        lambda rng, args: {"price": round(rng.uniform(20, 900), 2), "currency": "USD"},
        ("What's {symbol} trading at?", "Give me the latest {symbol} price on the {exchange}.",
         "How is {symbol} doing today?"),
        ("Let me fetch the quote.", "Checking the market now.", "I'll get the latest price."),
        ("Fetching the latest price for {symbol}.", "Getting the {exchange} quote for {symbol}."),
        ("{symbol} is trading at {price} {currency}.", "The latest {symbol} price is {price} {currency}."),
    ),
    Family(
        "create_event", "Add an event to the user's calendar.",
        (Param("title", "string"), Param("date", "string"), Param("time", "string"),
         Param("duration_minutes", "integer", False)),
        lambda rng: {"title": rng.choice(EVENTS), "date": _date(rng), "time": rng.choice(TIMES),
                     "duration_minutes": rng.choice((15, 30, 45, 60, 90))},
        lambda rng, args: {"event_id": f"evt_{rng.randint(1000, 9999)}"},
        ("Put {title} on my calendar for {date} at {time}.",
         "Schedule {title} on {date} at {time} for {duration_minutes} minutes.",
         "Add an event called {title}, {date}, starting {time}, {duration_minutes} minutes long."),
        ("Sure, adding it now.", "I'll put that on your calendar.", "Let me schedule that."),
        ("Adding {title} on {date} at {time}.", "Scheduling {title} for {duration_minutes} minutes on {date}."),
        ("Added {title} on {date} at {time} (event id {event_id}).", "Your event is saved as {event_id}."),
    ),
    Family(
        "send_email", "Send an email to a recipient.",
        (Param("to", "string"), Param("subject", "string"), Param("body", "string", False)),
        lambda rng: {"to": rng.choice(EMAILS), "subject": rng.choice(SUBJECTS), "body": rng.choice(BODIES)},
        lambda rng, args: {"status": "sent", "message_id": f"msg-{rng.randint(100000, 999999)}"},
        ("Email {to} with the subject {subject}.",
         "Send a message to {to}, subject {subject}, saying: {body}",
         "Please write to {to}. Subject: {subject}. Body: {body}"),
        ("I'll send that email.", "Sending it now.", "Sure, emailing them."),
        ("Sending an email to {to} about {subject}.",),
        ("Your email to {to} was {status} (id {message_id}).", "Message {message_id} to {to} is {status}."),
    ),
    Family(
        "convert_currency", "Convert an amount of money between currencies.",
        (Param("amount", "number"), Param("from_currency", "string"), Param("to_currency", "string")),
        _two_currencies,
        lambda rng, args: _exchange(rng, args["amount"]),
        ("How much is {amount} {from_currency} in {to_currency}?",
         "Convert {amount} {from_currency} to {to_currency}.",
         "I want to change {amount} {from_currency} into {to_currency}. How much will I get?"),
        ("Let me check the exchange rate.", "I'll convert that for you.", "Checking current rates."),
        ("Converting {amount} {from_currency} to {to_currency}.",),
        ("{amount} {from_currency} is {converted} {to_currency} at a rate of {rate}.",
         "You would get {converted} {to_currency}."),
    ),
    Family(
        "calculate", "Apply an arithmetic operation to two numbers.",
        (Param("operation", "string", True, tuple(sorted(OPERATIONS))), Param("a", "number"), Param("b", "number")),
        _arithmetic,
        lambda rng, args: {"result": OPERATIONS[args["operation"]](args["a"], args["b"])},
        ("Could you {operation} {a} and {b} for me?",
         "I need you to {operation} these two numbers: {a} and {b}.",
         "Please {operation} {a} and {b}."),
        ("Let me calculate that.", "Working it out.", "I'll compute it."),
        ("Computing {operation} with {a} and {b}.",),
        ("The result is {result}.", "That comes to {result}."),
    ),
    Family(
        "web_search", "Search the web and return the top results.",
        (Param("query", "string"), Param("max_results", "integer", False)),
        lambda rng: {"query": rng.choice(QUERIES), "max_results": rng.choice((3, 5, 10))},
        lambda rng, args: {"top_result": rng.choice(SEARCH_TITLES), "hits": rng.randint(20, 9000)},
        ("Search the web for {query}.", "Look up {query} and give me the top {max_results} results.",
         "Can you find something about {query}?"),
        ("I'll search for that.", "Let me look that up.", "Searching now."),
        ("Searching for {query}.", "Looking up the top {max_results} results for {query}."),
        ("The top result is {top_result}, out of {hits} hits.", "I found {hits} results; the best is {top_result}."),
    ),
    Family(
        "set_reminder", "Create a reminder at a date and time.",
        (Param("text", "string"), Param("date", "string"), Param("time", "string")),
        lambda rng: {"text": rng.choice(REMINDERS), "date": _date(rng), "time": rng.choice(TIMES)},
        lambda rng, args: {"reminder_id": f"rem_{rng.randint(100, 999)}"},
        ("Remind me to {text} on {date} at {time}.",
         "Set a reminder for {date} at {time}: {text}.",
         "Don't let me forget to {text}. Remind me {date}, {time}."),
        ("Sure, setting a reminder.", "I'll remind you.", "Creating the reminder."),
        ("Setting a reminder to {text} on {date} at {time}.",),
        ("I'll remind you to {text} on {date} at {time}.", "Reminder {reminder_id} is set."),
    ),
    Family(
        "translate_text", "Translate text into another language.",
        (Param("text", "string"), Param("target_language", "string"), Param("source_language", "string", False)),
        _phrase,
        lambda rng, args: {"translation": TRANSLATIONS[args["text"]][args["target_language"]]},
        ('Translate "{text}" into {target_language}.',
         'How do you say "{text}" in {target_language}?',
         "Please translate this {source_language} sentence to {target_language}: {text}"),
        ("Let me translate that.", "I'll translate it for you.", "Translating now."),
        ("Translating into {target_language}.",),
        ("In {target_language}: {translation}", "Here it is in {target_language}: {translation}"),
    ),
    Family(
        "get_directions", "Get directions between two places.",
        (Param("origin", "string"), Param("destination", "string"),
         Param("mode", "string", False, TRAVEL_MODES)),
        lambda rng: dict(zip(("origin", "destination"), rng.sample(CITIES, 2)), mode=rng.choice(TRAVEL_MODES)),
        lambda rng, args: {"distance_km": rng.randint(5, 2500), "duration_minutes": rng.randint(10, 1800)},
        ("How do I get from {origin} to {destination}?",
         "Directions from {origin} to {destination} by {mode}, please.",
         "What's the best {mode} route from {origin} to {destination}?"),
        ("Let me find a route.", "I'll get directions.", "Checking the route now."),
        ("Finding a route from {origin} to {destination}.", "Getting {mode} directions to {destination}."),
        ("It's {distance_km} km from {origin} to {destination}, about {duration_minutes} minutes.",
         "The trip to {destination} takes about {duration_minutes} minutes by {mode}."),
    ),
)


def _exchange(rng: random.Random, amount: float | int) -> dict[str, Any]:
    rate = round(rng.uniform(0.5, 1.6), 4)
    return {"rate": rate, "converted": round(amount * rate, 2)}


class _Tagged:
    """Text built piece by piece, remembering which pieces are reasoning."""

    def __init__(self) -> None:
        self.text = ""
        self.spans: list[tuple[int, int]] = []

    def fixed(self, piece: str) -> None:
        self.text += piece

    def value(self, piece: str) -> None:
        self.spans.append((len(self.text), len(self.text) + len(piece)))
        self.text += piece

    def template(self, template: str, values: dict[str, Any]) -> None:
        for literal, field, _, _ in Formatter().parse(template):
            self.fixed(literal)
            if field is not None:
                self.value(_shown(values[field]))

    def call(self, name: str, args: dict[str, Any]) -> None:
        """`[name(arg='value', n=3)]`, the same text as tools_text.format_calls."""
        self.fixed("[")
        self.value(name)
        self.fixed("(")
        for number, (key, arg) in enumerate(args.items()):
            self.fixed(f"{', ' if number else ''}{key}=")
            if isinstance(arg, str):
                quote = repr(arg)[0]
                self.fixed(quote)
                self.value(arg)
                self.fixed(quote)
            else:
                self.value(repr(arg))
        self.fixed(")]")


def _shown(value: Any) -> str:
    """A value as it appears in text: strings bare, numbers as their Python literal."""
    return value if isinstance(value, str) else repr(value)


def generate_synthetic(n: int, seed: int) -> list[Sample]:
    """`n` samples with known reasoning spans; the same seed gives the same samples."""
    rng = random.Random(seed)
    return [_sample(rng, f"synth-{seed}-{index:05d}") for index in range(n)]


def _sample(rng: random.Random, sample_id: str) -> Sample:
    family = rng.choice(FAMILIES)
    others = rng.sample([f for f in FAMILIES if f is not family], rng.randint(1, 3))
    tools = [f.tool() for f in rng.sample([family, *others], len(others) + 1)]
    values = family.values(rng)
    request = rng.choice(family.requests)
    used = {field for _, field, _, _ in Formatter().parse(request) if field}
    args = {p.name: values[p.name] for p in family.params if p.name in used}
    messages = [
        {"role": "system", "content": system_with_tools(rng.choice(SYSTEM_TEXTS), tools)},
        {"role": "user", "content": request.format_map({k: _shown(v) for k, v in values.items()})},
    ]
    multi_turn = rng.random() < MULTI_TURN_SHARE
    first, variant = _first_answer(rng, family, args, allow_prose=not multi_turn)
    messages.append({"role": "assistant", "content": first.text})
    spans = {2: first.spans}
    if multi_turn:
        result = family.result(rng, values)
        final = _Tagged()
        final.template(_pick(rng, family.finals, set(args) | set(result)), {**args, **result})
        messages.append({"role": "tool", "content": json.dumps(result, ensure_ascii=False)})
        messages.append({"role": "assistant", "content": final.text})
        spans[4] = final.spans
        variant = "multi_turn"
    return Sample(sample_id, messages, f"synthetic:{sample_id}", reasoning_spans=spans,
                  meta={"family": family.name, "variant": variant})


def _first_answer(
    rng: random.Random, family: Family, args: dict[str, Any], allow_prose: bool
) -> tuple[_Tagged, str]:
    """The answer carrying the call, and which variant it is (call, preface or prose)."""
    answer = _Tagged()
    variant = rng.choice(("call", "preface", "prose") if allow_prose else ("call", "preface"))
    if variant == "preface":
        answer.fixed(rng.choice(family.prefaces) + "\n")
    elif variant == "prose":
        answer.template(_pick(rng, family.prose, set(args)), args)
        answer.fixed("\n")
    answer.call(family.name, args)
    return answer, variant


def _pick(rng: random.Random, templates: tuple[str, ...], available: set[str]) -> str:
    """A template whose fields are all available (templates may mention optional arguments)."""
    usable = [t for t in templates if {f for _, f, _, _ in Formatter().parse(t) if f} <= available]
    return rng.choice(usable)
